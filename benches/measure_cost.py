#!/usr/bin/env python3
"""What measuring steps costs a cold run: mustbuild with and without
MUSTBUILD_NO_MEASURE=1 (which turns off the energy counters, NVML, and the
/proc reads for I/O and mustbuild's own peak; wait4 stays, it is how the
command's end is learnt).

Usage (from anywhere; the repository root is found from this file's location):

    cargo build --release
    benches/measure_cost.py                     # 1,000 steps, wide and layered, 9 pairs
    benches/measure_cost.py --steps 5000 --reps 5

For each shape of benches/compare.py, it runs the pipeline cold (outputs and
store removed) --reps times each way, alternating (off, on, off, on…) so that
the machine's drift touches both alike, and prints the medians and the
overhead. The target (issue 21): under 3%.

    benches/measure_cost.py --what sandbox      # sandboxed (the default) against --no-sandbox (issue 25: under 5%)
    benches/measure_cost.py --what sandbox --workdir /dev/shm   # on a tmpfs: without ext4's noise

On ext4 these cold runs are noisy (inode allocation slows behind recent
deletions, and the runs delete thousands of files): a tmpfs shows what the
thing measured costs.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import Dag, write_mustbuild, write_sources

ROOT = Path(__file__).resolve().parent.parent


def cold(binary, folder, jobs, measure, sandbox=False):
    shutil.rmtree(folder / "out", ignore_errors=True)
    shutil.rmtree(folder / "store", ignore_errors=True)
    env = dict(os.environ)
    env.pop("MUSTBUILD_NO_MEASURE", None)
    if not measure:
        env["MUSTBUILD_NO_MEASURE"] = "1"
    argv = [str(binary), "run", "pipeline.kdl", "-j", str(jobs), "--store", "store", "--json"]
    if not sandbox:
        argv.append("--no-sandbox")  # sandboxed is the default
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed in {folder}:\n{r.stderr[-2000:]}")
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mustbuild", type=Path, default=ROOT / "target" / "release" / "mustbuild")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--shapes", default="wide,layered")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--jobs", "-j", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the pipelines are written (default: a temporary folder); a tmpfs such as /dev/shm takes the disk's noise out")
    p.add_argument("--what", choices=["measure", "sandbox"], default="measure",
                   help="what is turned on: measuring (against MUSTBUILD_NO_MEASURE=1), or the sandbox (against --no-sandbox)")
    args = p.parse_args()
    # (measure, sandbox) for the runs without, then with.
    without, with_ = {"measure": ((False, False), (True, False)),
                      "sandbox": ((True, False), (True, True))}[args.what]
    if not args.mustbuild.exists():
        sys.exit(f"no binary at {args.mustbuild}: cargo build --release")
    rows = []
    with tempfile.TemporaryDirectory(prefix="measure-cost-", dir=args.workdir) as tmp:
        for shape in args.shapes.split(","):
            dag = Dag(shape, args.steps, 1)
            folder = Path(tmp) / shape
            folder.mkdir()
            write_sources(dag, folder)
            write_mustbuild(dag, folder, f"measure-{shape}")
            cold(args.mustbuild, folder, args.jobs, True)  # warm the page cache
            off, on = [], []
            for _ in range(args.reps):
                off.append(cold(args.mustbuild, folder, args.jobs, *without))
                on.append(cold(args.mustbuild, folder, args.jobs, *with_))
            m_off, m_on = statistics.median(off), statistics.median(on)
            rows.append((shape, dag.n, m_off, m_on, (m_on / m_off - 1) * 100))
            print(f"   {shape}: off {[round(x, 3) for x in off]}", flush=True)
            print(f"   {shape}: on  {[round(x, 3) for x in on]}", flush=True)
    print(f"\ncold runs, -j {args.jobs}, medians of {args.reps}\n")
    names = {"measure": ("MUSTBUILD_NO_MEASURE=1", "measured"), "sandbox": ("--no-sandbox", "sandboxed")}
    print(f"| shape | steps | {names[args.what][0]} (s) | {names[args.what][1]} (s) | overhead |")
    print("|---|---:|---:|---:|---:|")
    for shape, n, a, b, pct in rows:
        print(f"| {shape} | {n:,} | {a:.3f} | {b:.3f} | {pct:+.1f}% |")


if __name__ == "__main__":
    main()
