#!/usr/bin/env python3
"""What a step costs on HTCondor beyond its command: 200 trivial steps run with
`mustbuild run --executor htcondor` on the real pool of scripts/htcondor-pool
(HTCondor 23 from Debian 13, 2 slots, its fast negotiator settings), grouped and
ungrouped, next to the same 200 commands submitted by hand with one
`condor_submit` (`queue 200`) and waited for with `condor_wait`.

Usage (as root: the pool needs it; from anywhere):

    cargo build --release
    benches/condor_overhead.py                  # 200 steps, 3 reps
    benches/condor_overhead.py --steps 500 --reps 5

It starts a pool of its own (or uses the one in $MUSTBUILD_TEST_CONDOR_BIN)
and runs everything as the pool's ordinary user, in /var/tmp.

- ungrouped: each step declares nothing, so each is one HTCondor job;
- grouped: each step declares `time="1s"`, so short steps of one shape go out
  in groups (engine::run::batch::SHORT, GROUP_MAX = 50): 4 jobs for 200;
- by hand: one submit description, `queue 200` of `/bin/sh -c "echo N > out/N"`.

Times are from the start of the command to every result recorded (mustbuild) or
to the last job's termination event (by hand); per job: that time / steps.

Seen here (2 cores, 2 slots, 2026-12-07, medians of 3; submit to every result
recorded):

    ungrouped  13.70 s   68.5 ms/job   (200 jobs, one condor_submit)
    grouped     2.65 s   13.3 ms/job   (4 jobs of 50)
    by hand    13.16 s   65.8 ms/job   (one condor_submit, queue 200, condor_wait)

Ungrouped, mustbuild costs about what HTCondor itself does per job (the pool's
negotiation and starts dominate); grouped, a fifth of it.
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


def sh(argv, cwd=None, env=None, user=None):
    if user:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", "--", *argv]
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return r.stdout


def start_pool(work):
    if os.environ.get("MUSTBUILD_TEST_CONDOR_BIN"):
        return os.environ["MUSTBUILD_TEST_CONDOR_BIN"], os.environ["MUSTBUILD_TEST_CONDOR_USER"], None
    pool = work / "pool"
    out = sh([ROOT / "scripts" / "htcondor-pool", "start", pool, "/tmp", "/var/tmp", ROOT])
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env["MUSTBUILD_TEST_CONDOR_BIN"], env["MUSTBUILD_TEST_CONDOR_USER"], pool


def pipeline(name, steps, grouped):
    values = " ".join(f'"{i}"' for i in range(steps))
    time_line = '    resources time="1s"\n' if grouped else ""
    return (
        f'pipeline "{name}"\n'
        "step trivial {\n"
        f"    foreach i {values}\n"
        '    out x="out/{i}.txt"\n'
        '    run "echo {i} > {out.x}"\n'
        f"{time_line}"
        "}\n"
    )


def run_mustbuild(binary, bin_dir, user, dir, name, steps, grouped):
    dir.mkdir(parents=True)
    (dir / "pipeline.kdl").write_text(pipeline(name, steps, grouped))
    sh(["chown", "-R", f"{user}:{user}", dir])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "HOME": str(dir)}
    t0 = time.perf_counter()
    out = sh([binary, "run", "pipeline.kdl", "--store", "store", "--executor", "htcondor"],
             cwd=dir, env=env, user=user)
    took = time.perf_counter() - t0
    if not out.startswith(f"executed {steps},"):
        sys.exit(f"unexpected summary: {out}")
    return took


def run_by_hand(bin_dir, user, dir, steps):
    dir.mkdir(parents=True)
    (dir / "out").mkdir()
    (dir / "job.sub").write_text(
        "universe = vanilla\n"
        "executable = /bin/sh\n"
        f'arguments = "-c \'echo $(Process) > {dir}/out/$(Process).txt\'"\n'
        f"log = {dir}/events.log\n"
        "should_transfer_files = NO\n"
        "request_memory = 64\n"
        f"queue {steps}\n"
    )
    sh(["chown", "-R", f"{user}:{user}", dir])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    t0 = time.perf_counter()
    sh([Path(bin_dir) / "condor_submit", dir / "job.sub"], cwd=dir, env=env, user=user)
    sh([Path(bin_dir) / "condor_wait", dir / "events.log"], cwd=dir, env=env, user=user)
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
        sys.exit("run as root: the HTCondor pool needs it")
    work = Path(tempfile.mkdtemp(prefix="condor-overhead.", dir="/var/tmp"))
    pool = None
    try:
        bin_dir, user, pool = start_pool(work)
        # A copy the pool's user can run, outside any build folder.
        binary = work / "mustbuild"
        shutil.copy(args.mustbuild, binary)
        os.chmod(work, 0o755)
        times = {"ungrouped": [], "grouped": [], "by hand": []}
        for rep in range(args.reps):
            for grouped in (False, True):
                label = "grouped" if grouped else "ungrouped"
                d = work / f"{label}-{rep}"
                name = f"overhead-{label}-{rep}-{os.getpid()}"
                times[label].append(run_mustbuild(binary, bin_dir, user, d, name, args.steps, grouped))
            times["by hand"].append(run_by_hand(bin_dir, user, work / f"hand-{rep}", args.steps))
        print(f"{args.steps} trivial steps on the pool, medians of {args.reps} (s, and ms per job):")
        for label, ts in times.items():
            m = statistics.median(ts)
            print(f"  {label:<10} {m:7.2f} s   {1000 * m / args.steps:7.1f} ms/job   (runs: {', '.join(f'{t:.2f}' for t in ts)})")
    finally:
        if pool is not None:
            subprocess.run([ROOT / "scripts" / "htcondor-pool", "stop", pool])
        # Never through a live bind mount (the pool's root holds /tmp and /var/tmp).
        if f" {work}" in Path("/proc/self/mountinfo").read_text():
            print(f"mounts left under {work}: not removing it", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
