#!/usr/bin/env python3
"""What a step costs on Slurm beyond its command: 200 trivial steps run with
`mustbuild run --executor slurm` on the real single node of scripts/slurm-node
(slurm-wlm 22.05, 2 CPUs, a cgroup per job), grouped and ungrouped, next to the
same 200 commands submitted by hand: one job array (`sbatch --array=0-199`) and
one `sbatch` per job, each waited for by polling `squeue`.

Usage (as root: the node needs it; from anywhere):

    cargo build --release
    benches/slurm_overhead.py                 # 200 steps, 3 reps
    benches/slurm_overhead.py --steps 100 --reps 1

It starts a node of its own (or uses the one $SLURM_CONF names).

- ungrouped: each step declares only its memory, so each is one array task
  (mustbuild submits one array per batch and shape);
- grouped: each step declares `time="1s"`, so short steps go out in groups of
  up to 50 (engine::run::batch::SHORT, GROUP_MAX): 4 tasks for 200;
- array by hand: one `sbatch --array=0-199 --wrap`;
- sbatch per job by hand: 200 `sbatch --wrap` calls, as per-job engines submit.

Times are from the start to every result recorded (mustbuild) or to the queue
holding none of the jobs pending or running (by hand).

Seen here (2 cores, cgroups, 2026-12-07, medians of 3):

    ungrouped        94.39 s   471.9 ms/job   (1 sbatch, one array of 200)
    grouped           3.53 s    17.6 ms/job   (4 array tasks of 50)
    array by hand    94.50 s   472.5 ms/job   (1 sbatch)
    sbatch per job   94.21 s   471.1 ms/job   (200 sbatch)

The node's job launches (a cgroup, a step, ~0.48 s each on 2 CPUs) bound all
but the grouped run: mustbuild adds nothing measurable to them, and the
per-job submissions cost slurmctld 200 round trips instead of 1 for no gain.
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

ROOT = Path(__file__).resolve().parent.parent


def sh(argv, cwd=None, env=None):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return r.stdout


def pipeline(name, steps, grouped):
    values = " ".join(f'"{i}"' for i in range(steps))
    extra = ' time="1s"' if grouped else ""
    return (
        f'pipeline "{name}"\nstep trivial {{\n    foreach i {values}\n'
        '    out x="out/{i}.txt"\n    run "echo {i} > {out.x}"\n'
        f'    resources memory="64MiB"{extra}\n}}\n'
    )


def run_mustbuild(binary, dir, name, steps, grouped):
    dir.mkdir(parents=True)
    (dir / "pipeline.kdl").write_text(pipeline(name, steps, grouped))
    t0 = time.perf_counter()
    out = sh([binary, "run", "pipeline.kdl", "--store", "store", "--executor", "slurm"], cwd=dir)
    took = time.perf_counter() - t0
    if not out.startswith(f"executed {steps},"):
        sys.exit(f"unexpected summary: {out}")
    return took


def wait_for(name):
    while sh(["squeue", "-h", "-n", name, "-t", "PENDING,RUNNING,CONFIGURING,COMPLETING", "-o", "%i"]).strip():
        time.sleep(0.2)


def by_hand(dir, steps, array):
    (dir / "out").mkdir(parents=True)
    name = dir.name
    t0 = time.perf_counter()
    common = ["--parsable", f"--job-name={name}", "--mem=64M", "-o", "/dev/null"]
    if array:
        sh(["sbatch", *common, f"--array=0-{steps - 1}", "--wrap", f"echo $SLURM_ARRAY_TASK_ID > {dir}/out/$SLURM_ARRAY_TASK_ID.txt"])
    else:
        for i in range(steps):
            sh(["sbatch", *common, "--wrap", f"echo {i} > {dir}/out/{i}.txt"])
    wait_for(name)
    took = time.perf_counter() - t0
    done = len(list((dir / "out").iterdir()))
    if done != steps:
        sys.exit(f"by hand: {done} of {steps} outputs")
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--mustbuild", default=str(ROOT / "target" / "release" / "mustbuild"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the Slurm node needs it")
    work = Path(tempfile.mkdtemp(prefix="slurm-overhead.", dir="/var/tmp"))
    os.chmod(work, 0o755)  # munge runs as its own user
    node = None
    try:
        if not os.environ.get("SLURM_CONF"):
            node = work / "node"
            out = sh([ROOT / "scripts" / "slurm-node", "start", node])
            os.environ.update(dict(l.split("=", 1) for l in out.splitlines() if l.startswith("SLURM_CONF=")))
        binary = work / "mustbuild"
        shutil.copy(args.mustbuild, binary)
        times = {"ungrouped": [], "grouped": [], "array by hand": [], "sbatch per job": []}
        for rep in range(args.reps):
            for grouped in (False, True):
                label = "grouped" if grouped else "ungrouped"
                name = f"overhead-{label}-{rep}-{os.getpid()}"
                times[label].append(run_mustbuild(binary, work / f"{label}-{rep}", name, args.steps, grouped))
            times["array by hand"].append(by_hand(work / f"array-{rep}", args.steps, True))
            times["sbatch per job"].append(by_hand(work / f"each-{rep}", args.steps, False))
        print(f"{args.steps} trivial steps on one Slurm node, medians of {args.reps} (s, and ms per job):")
        for label, ts in times.items():
            m = statistics.median(ts)
            print(f"  {label:<15} {m:7.2f} s  {1000 * m / args.steps:7.1f} ms/job   (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    finally:
        if node is not None:
            subprocess.run([ROOT / "scripts" / "slurm-node", "stop", node])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
