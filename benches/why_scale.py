#!/usr/bin/env python3
"""Time of `mustbuild why` on outputs of 10,000-step pipelines.

Usage (from anywhere; the repository root is found from this file's location):

    cargo build --release
    benches/why_scale.py                          # 10,000 steps, wide and layered, 9 runs
    benches/why_scale.py --sizes 10000,100000 --reps 5 --keep /tmp/why

For each shape of benches/compare.py (`wide`: independent steps; `layered`: 10
layers, each step reading 2 or 3 outputs of the layer before), it runs the
pipeline cold, changes one source file (the one whose cone reaches the last
layer) and runs again, then times `mustbuild why` (and `--json`) --reps times
on two outputs:
  last     an output of the last layer in the changed cone: the explanation
           follows every changed input back to the source (for layered, a tree
           over all ten layers);
  reused   an output outside the cone: the answer is "reused".
The target (issue 20): under 50 ms on a 10,000-step pipeline. Medians reported.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import Dag, write_mustbuild, write_sources

ROOT = Path(__file__).resolve().parent.parent


def run(argv, cwd, env):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def median_ms(argv, cwd, env, reps):
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run(argv, cwd, env)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mustbuild", type=Path, default=ROOT / "target/release/mustbuild")
    p.add_argument("--sizes", default="10000")
    p.add_argument("--shapes", default="wide,layered")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--keep", type=Path, help="generate here and keep it")
    a = p.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="why-scale-"))
    rows = []
    try:
        for size in map(int, a.sizes.split(",")):
            for shape in a.shapes.split(","):
                dag = Dag(shape, size, seed=1)
                folder = work / f"{shape}-{size}"
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                write_sources(dag, folder)
                write_mustbuild(dag, folder, f"why-{shape}-{size}")
                env = {"PATH": "/usr/bin:/bin", "MUSTBUILD_STORE": str(folder / "store")}
                mb = str(a.mustbuild)
                run([mb, "run", "pipeline.kdl", "-j", "2"], folder, env)
                source, cone = dag.changed_source()
                (folder / dag.src_path(source)).write_text(f"changed {source}\n")
                run([mb, "run", "pipeline.kdl", "-j", "2"], folder, env)
                last = max(cone)
                reused = next(i for i in range(dag.n - 1, -1, -1) if i not in cone)
                for what, i in (("last", last), ("reused", reused)):
                    out = dag.out_path(i)
                    text = run([mb, "why", out], folder, env)
                    human = median_ms([mb, "why", out], folder, env, a.reps)
                    js = median_ms([mb, "why", out, "--json"], folder, env, a.reps)
                    rows.append((shape, size, what, len(cone) if what == "last" else 0, human, js, len(text.splitlines())))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{'shape':<8} {'steps':>7} {'output':<7} {'cone':>5} {'why ms':>8} {'--json ms':>9} {'lines':>6}")
    for shape, size, what, cone, human, js, lines in rows:
        print(f"{shape:<8} {size:>7} {what:<7} {cone:>5} {human:>8.1f} {js:>9.1f} {lines:>6}")


if __name__ == "__main__":
    main()
