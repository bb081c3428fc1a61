#!/usr/bin/env python3
"""Time and peak memory of `mustbuild check` on WfCommons-shaped pipelines.

Usage (from anywhere; the repository root is found from this file's location):

    cargo build --release
    benches/check_scale.py                       # 10,000 and 100,000 steps, 5 runs each
    benches/check_scale.py --sizes 10000 --reps 9 --keep /tmp/scale

The pipelines are a WfCommons Seismology instance as a converter writes it (the
shape of `seismology()` in benches/check.rs): one step per station with long,
distinct file names, and the steps that gather their outputs by name, either all
in one step (`one-gather`) or a thousand per step (`gathers-of-1000`). Each is
checked --reps times; the table gives the median wall time, the median peak RSS
of the process (ru_maxrss of wait4, through GNU time where it is installed;
see `measure` in compare.py) and that peak over
the file's size. The targets (issue 19): 10,000 steps under 0.3 s, 100,000 steps
under 3 s with a peak under 10 times the file's size.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from compare import gnu_time, measure, tail

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = ["IU", "II", "GE", "G", "CN"]


def station_step(i):
    net, sta, day, hour = NETWORKS[i % 5], i % 977, i % 28 + 1, i % 24
    stem = f"{net}.S{sta:04}.00"
    when = f"2020-06-{day:02}T{hour:02}.{i:08}"
    return (
        f"step sG1IterDecon_{i:08} {{\n"
        f'    in vertical=(file)"data/seismology/{stem}.BHZ.{when}.sac"'
        f' radial=(file)"data/seismology/{stem}.BHR.{when}.sac"\n'
        f'    out stf="work/stf/{stem}.{when}.stf.txt"\n'
        '    run "sG1IterDecon --vertical {in.vertical} --radial {in.radial} --gauss 2.5'
        ' --iterations 200 --min-error 0.001 --output {out.stf}"\n'
        '    resources cpus=1 memory="1GiB" time="20m"\n}\n'
    )


def gather_step(name, members):
    lines = [f"step {name} {{\n"]
    for start in range(0, len(members), 50):
        part = members[start : start + 50]
        lines.append("    in " + " ".join(f"stf{i}=sG1IterDecon_{i:08}.stf" for i in part) + "\n")
    lines.append(f'    out sifted="work/{name}.tar.gz"\n')
    lines.append(
        '    run "siftSTFByMisfit '
        + " ".join(f"{{in.stf{i}}}" for i in members)
        + ' --output {out.sifted}"\n}\n'
    )
    return "".join(lines)


def pipeline(steps, group):
    """`steps` steps in all: stations, then gathers of `group` (None: one gather)."""
    gathers = 1 if group is None else -(-steps // (group + 1))
    stations = steps - gathers
    group = group or stations
    out = ['pipeline "seismology-wfcommons"\ntool sG1IterDecon\ntool siftSTFByMisfit\n\n']
    out.extend(station_step(i) for i in range(stations))
    for k, start in enumerate(range(0, stations, group)):
        out.append(gather_step(f"siftSTFByMisfit_{k:04}", range(start, min(start + group, stations))))
    return "".join(out)


def run_check(binary, path, rss_wrapper):
    """(seconds, peak RSS in KiB) of one `mustbuild check`, measured as compare.py does."""
    log = path.with_suffix("")
    seconds, code, rss = measure([str(binary), "check", str(path)], path.parent, log, rss_wrapper)
    if code != 0:
        sys.exit(f"mustbuild check {path} failed:\n{tail(f'{log}.err')}")
    return seconds, rss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="write the pipelines here and keep them")
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/mustbuild")
    args = ap.parse_args()
    if not args.binary.exists():
        sys.exit(f"{args.binary} is missing: run `cargo build --release` first")
    work = args.keep or Path(tempfile.mkdtemp(prefix="check-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rss_wrapper = gnu_time()
    print(f"{'steps':>8} {'shape':<16} {'MB':>7} {'median s':>9} {'peak MiB':>9} {'peak/file':>9}")
    try:
        for steps in args.sizes:
            for shape, group in (("one-gather", None), ("gathers-of-1000", 1000)):
                path = work / f"seismology-{steps}-{shape}.kdl"
                path.write_text(pipeline(steps, group))
                size = path.stat().st_size
                runs = [run_check(args.binary, path, rss_wrapper) for _ in range(args.reps)]
                wall = statistics.median(r[0] for r in runs)
                rss = statistics.median(r[1] for r in runs)
                print(
                    f"{steps:>8} {shape:<16} {size / 1e6:>7.1f} {wall:>9.3f}"
                    f" {rss / 1024:>9.0f} {rss * 1024 / size:>8.1f}x"
                )
    finally:
        if args.keep is None:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
