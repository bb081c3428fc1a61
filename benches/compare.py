#!/usr/bin/env python3
"""Compare mustbuild with GNU make and ninja on the same generated DAGs.

Usage (from anywhere; the repository root is found from this file's location):

    cargo build --release
    apt-get install ninja-build            # or pass --no-ninja
    benches/compare.py                     # 1,000 and 10,000 steps, both shapes, then 100,000
    benches/compare.py --sizes 1000 --shapes wide --skip-100k --reps 3
    benches/compare.py --jobs 4 --workdir /scratch/bench --json-out results.json

What it does
------------
For every shape and size it generates one DAG and writes it three times, in three
folders under --workdir (default: a fresh temporary folder, removed at the end
unless --keep): a mustbuild pipeline with one explicit `step` per node (no
fan-out), a Makefile with one explicit rule per node, and a build.ninja with one
explicit build edge per node. The generated pipeline is checked once with
`mustbuild check`.

Shapes:
  wide      N independent steps; step i reads its own source file src/i.txt.
  layered   L layers of W steps (10 layers up to 10,000 steps, else N/1000 layers
            of 1,000); layer 0 reads one source file per step, every step of
            layer k > 0 reads 2 or 3 outputs of layer k-1 chosen by a seeded RNG
            (--seed).

Every step runs the same command in all three tools:

    cksum IN1 [IN2 IN3] > OUT

(`cat` would make the outputs of deep layered graphs grow exponentially; cksum
keeps every output one short line per input while each output still depends on
every byte of its inputs, so a change propagates through its whole downstream
cone in all three tools and early cutoff never applies.) The shells differ.
make and ninja run `/bin/sh -c`. mustbuild runs a command as `bash -e -o
pipefail -c` would, but starts a simple command like this one (plain words and
redirections) itself, without bash (see executors/src/direct.rs); GNU make does
the same for recipe lines without shell syntax. Two more rows show what the
shell costs:
  make-bash       GNU make with SHELL and .SHELLFLAGS set to run each recipe
                  under bash -e -o pipefail -c (--no-make-bash);
  mustbuild-bash  mustbuild with `;` after each command, which makes it shell
                  syntax and so runs it through bash, as every command went
                  before the direct start (--no-mustbuild-bash).
make runs as `make -r -R` (no built-in rules or variables).

Measurements, each repeated --reps times (default 5 for sizes up to 1,000 and 3
above), medians reported, all tools with the same -j (--jobs, default 2):

  cold        outputs removed; for mustbuild also a fresh empty store
              (`--store DIR`); for ninja also .ninja_log / .ninja_deps removed
  no-op       the same command immediately again
  one-change  one byte of ONE source file changed to a new value (each repetition
              another), then the command again; the file feeds one wide step, or
              one step of layer 0 (the first whose downstream cone reaches the
              last layer), and every tool reruns that whole cone

Checks (the script stops with an error if any fails): exit status 0; after a cold
run every output exists and the outputs of all three tools are byte-identical;
the no-op run changed no output (mtimes) and mustbuild executed 0 steps; the
one-change run rewrote exactly the downstream cone of the changed source (output
mtimes) and mustbuild's `--json` summary says it executed exactly that many steps.

Then, unless --skip-100k, a --big-step (default 100,000) layered pipeline runs
through mustbuild (and ninja, when present): check, cold once, then no-op
--reps times; it prints the median no-op time and the no-op peak RSS of the
tool's process (ru_maxrss of wait4, KiB on Linux). A child of this Python process
inherits Python's own peak RSS as a floor of its ru_maxrss (Linux carries the
parent's high-water mark over at exec), so when GNU time (/usr/bin/time) is
present the tool is started through it: it forks the tool from a small process
and reports the child's wait4 ru_maxrss. Otherwise os.wait4 is used directly and
the floor is printed.

Output: a Markdown table (seconds, 3 significant digits; `÷ninja` columns give
each tool's time divided by ninja's) and, with --json-out FILE, the same data
with every sample as JSON.
"""

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MUSTBUILD = REPO / "target" / "release" / "mustbuild"
SHELLS = {
    "mustbuild": "none (a simple command is started directly)",
    "mustbuild-bash": "bash -e -o pipefail -c",
    "make": "/bin/sh -c",
    "make-bash": "bash -e -o pipefail -c",
    "ninja": "/bin/sh -c",
}


def fail(message):
    print(f"\nERROR: {message}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------
# The DAG


class Dag:
    """Steps in topological order; step i writes out/i.txt.

    inputs[i] is a list of ("src", j) (source file src/j.txt) or ("step", j).
    """

    def __init__(self, shape, n, seed):
        self.shape = shape
        self.inputs = []
        self.layers = 1
        if shape == "wide":
            self.sources = n
            self.inputs = [[("src", i)] for i in range(n)]
        elif shape == "layered":
            self.layers = 10 if n <= 10_000 else max(2, n // 1000)
            width = n // self.layers
            if width < 3:
                fail(f"layered needs at least 3 steps per layer ({n} steps)")
            rng = random.Random(seed)
            self.sources = width
            self.inputs = [[("src", j)] for j in range(width)]
            for layer in range(1, self.layers):
                base = (layer - 1) * width
                for _ in range(width):
                    picks = sorted(rng.sample(range(width), rng.choice((2, 3))))
                    self.inputs.append([("step", base + p) for p in picks])
        else:
            fail(f"unknown shape {shape!r}")
        self.n = len(self.inputs)
        self.edges = sum(len(i) for i in self.inputs if i[0][0] == "step")

    @staticmethod
    def src_path(j):
        return f"src/{j}.txt"

    @staticmethod
    def out_path(i):
        return f"out/{i}.txt"

    def in_paths(self, i):
        return [self.src_path(j) if kind == "src" else self.out_path(j) for kind, j in self.inputs[i]]

    def cone(self, source):
        """The steps that (transitively) read source file `source`."""
        hit = set()
        for i, ins in enumerate(self.inputs):
            for kind, j in ins:
                if (kind == "src" and j == source) or (kind == "step" and j in hit):
                    hit.add(i)
                    break
        return hit

    def changed_source(self):
        """The source that one-change edits: the first whose downstream cone reaches the last
        layer (with few readers per step, an unlucky seed could leave layer-0 step 0 unread),
        and that cone."""
        first = None
        for j in range(self.sources):
            cone = self.cone(j)
            first = first or (j, cone)
            if max(cone) >= self.n - self.n // self.layers:
                return j, cone
        return first

    def command(self, i):
        return f"cksum {' '.join(self.in_paths(i))} > {self.out_path(i)}"


def write_sources(dag, folder):
    (folder / "src").mkdir(parents=True, exist_ok=True)
    for j in range(dag.sources):
        (folder / dag.src_path(j)).write_text(f"source {j}\n")


def write_mustbuild(dag, folder, name, through_bash=False):
    lines = [f'pipeline "{name}"', ""]
    lines += [f'input s{j} "{dag.src_path(j)}"' for j in range(dag.sources)]
    letters = "abc"
    for i, ins in enumerate(dag.inputs):
        refs = " ".join(
            f"{letters[k]}={'s' + str(j) if kind == 'src' else f'n{j}.o'}"
            for k, (kind, j) in enumerate(ins)
        )
        placeholders = " ".join(f"{{in.{letters[k]}}}" for k in range(len(ins)))
        lines += [
            "",
            f"step n{i} {{",
            f"    in {refs}",
            f'    out o="{dag.out_path(i)}"',
            f'    run "cksum {placeholders} > {{out.o}}{";" if through_bash else ""}"',
            "}",
        ]
    (folder / "pipeline.kdl").write_text("\n".join(lines) + "\n")


def write_make(dag, folder, bash=False):
    outs = [dag.out_path(i) for i in range(dag.n)]
    lines = [".PHONY: all", "all: " + " ".join(outs), ""]
    if bash:
        # Each recipe line as mustbuild runs a command: bash -e -o pipefail -c.
        lines[:0] = ["SHELL := /bin/bash", ".SHELLFLAGS := -e -o pipefail -c"]
    for i in range(dag.n):
        lines.append(f"{outs[i]}: {' '.join(dag.in_paths(i))}")
        lines.append(f"\t{dag.command(i)}")
    (folder / "Makefile").write_text("\n".join(lines) + "\n")


def write_ninja(dag, folder):
    lines = ["rule c", "  command = cksum $in > $out", ""]
    for i in range(dag.n):
        lines.append(f"build {dag.out_path(i)}: c {' '.join(dag.in_paths(i))}")
    (folder / "build.ninja").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------
# Running and measuring


def gnu_time():
    """/usr/bin/time if it is GNU time (its `-f %M` is the child's ru_maxrss from wait4), else None."""
    path = shutil.which("time")
    if path and "GNU" in version([path, "--version"]):
        return path
    return None


def measure(argv, cwd, log_prefix, rss_wrapper=None):
    """Run argv in cwd; stdout/stderr to LOG.out/LOG.err. Returns (seconds, status, maxrss KiB).

    The peak RSS is ru_maxrss of os.wait4. A child of this Python process starts from a
    floor, though: at exec, Linux carries the parent's high-water RSS over into the
    child's ru_maxrss (vfork shares Python's memory), so values below Python's own
    peak are not the tool's. With rss_wrapper (GNU time), the tool is forked by that
    small process instead, which reports the child's wait4 ru_maxrss itself.
    """
    if rss_wrapper:
        argv = [rss_wrapper, "-f", "%M", "-o", f"{log_prefix}.rss", *argv]
    with open(f"{log_prefix}.out", "wb") as out, open(f"{log_prefix}.err", "wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    proc.returncode = code
    rss = usage.ru_maxrss
    if rss_wrapper:
        try:
            rss = int(Path(f"{log_prefix}.rss").read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            fail(f"GNU time wrote no peak RSS to {log_prefix}.rss")
    return seconds, code, rss


def tail(path, lines=15):
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def snapshot(folder):
    """Output name -> mtime_ns of every file in folder/out."""
    out = folder / "out"
    if not out.is_dir():
        return {}
    return {e.name: e.stat().st_mtime_ns for e in os.scandir(out)}


def outputs_digest(folder, n):
    h = hashlib.blake2b()
    for i in range(n):
        h.update(Dag.out_path(i).encode() + b"\0")
        h.update((folder / Dag.out_path(i)).read_bytes())
    return h.hexdigest()


class Tool:
    name = "?"

    def __init__(self, folder, jobs, logs):
        self.folder = folder
        self.jobs = jobs
        self.logs = logs
        self.runs = 0
        self.last_summary = None

    def clean(self):
        shutil.rmtree(self.folder / "out", ignore_errors=True)

    def argv(self):
        raise NotImplementedError

    def run(self, label, rss_wrapper=None):
        self.runs += 1
        log = self.logs / f"{self.folder.parent.name}-{self.name}-{self.runs:03d}-{label}"
        seconds, code, rss = measure(self.argv(), self.folder, log, rss_wrapper)
        if code != 0:
            fail(
                f"{self.name} exited with {code} ({label}) in {self.folder}\n"
                f"--- {log}.err\n{tail(f'{log}.err')}\n--- {log}.out\n{tail(f'{log}.out')}"
            )
        self.after(log)
        return seconds, rss

    def after(self, log):
        pass


class Mustbuild(Tool):
    name = "mustbuild"

    def __init__(self, folder, jobs, logs, binary):
        super().__init__(folder, jobs, logs)
        self.binary = binary

    def clean(self):
        super().clean()
        shutil.rmtree(self.folder / "store", ignore_errors=True)

    def argv(self):
        return [str(self.binary), "run", "pipeline.kdl", "-j", str(self.jobs), "--store", "store", "--json"]

    def after(self, log):
        # The summary is the last line; do not parse the (possibly 100,000) event lines.
        with open(f"{log}.out", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            last = f.read().splitlines()[-1]
        try:
            summary = json.loads(last)
        except (ValueError, IndexError):
            fail(f"mustbuild printed no JSON summary; last line: {last!r} ({log}.out)")
        if summary.get("event") != "summary" or summary.get("failed") != 0:
            fail(f"unexpected mustbuild summary {summary} ({log}.out)")
        self.last_summary = summary

    def expect(self, executed, cached, label):
        s = self.last_summary
        if s["executed"] != executed or s["cached"] != cached:
            fail(
                f"{self.name} {label}: expected executed={executed} cached={cached}, "
                f"its summary says executed={s['executed']} cached={s['cached']} ({self.folder})"
            )


class Make(Tool):
    name = "make"

    def clean(self):
        super().clean()
        # make cannot create folders without a mkdir in every recipe.
        (self.folder / "out").mkdir()

    def argv(self):
        return ["make", "-r", "-R", "-j", str(self.jobs)]


class Ninja(Tool):
    name = "ninja"

    def clean(self):
        super().clean()
        for f in (".ninja_log", ".ninja_deps"):
            (self.folder / f).unlink(missing_ok=True)

    def argv(self):
        return ["ninja", "-j", str(self.jobs)]


def change_source(folder, source, not_before_ns):
    """Set the first byte of src/SOURCE.txt to the next letter; its mtime must be newer than
    every output (coarse file-system clocks: retry until it is)."""
    path = folder / Dag.src_path(source)
    data = bytearray(path.read_bytes())
    data[0] = ord("a") + (data[0] - ord("a") + 1) % 26 if data[0] >= ord("a") else ord("a")
    path.write_bytes(bytes(data))
    while path.stat().st_mtime_ns <= not_before_ns:
        time.sleep(0.005)
        os.utime(path)


# ----------------------------------------------------------------------------
# Benchmarks


def sig3(x):
    """x with 3 significant digits, never in exponent notation."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    x = float(f"{x:.3g}")  # round first: 9.9999 is 10.0, not 10.00
    digits = max(0, 2 - int(f"{abs(x):e}".split("e")[1]))
    return f"{x:.{digits}f}"


def median(samples):
    return statistics.median(samples) if samples else None


def setup(dag, base, tools_wanted, binary, jobs, logs, name):
    base.mkdir(parents=True)
    tools = {}
    for tool in tools_wanted:
        folder = base / tool
        folder.mkdir()
        write_sources(dag, folder)
        if tool in ("mustbuild", "mustbuild-bash"):
            write_mustbuild(dag, folder, name, through_bash=tool == "mustbuild-bash")
            tools[tool] = Mustbuild(folder, jobs, logs, binary)
            tools[tool].name = tool
        elif tool in ("make", "make-bash"):
            write_make(dag, folder, bash=tool == "make-bash")
            tools[tool] = Make(folder, jobs, logs)
            tools[tool].name = tool
        else:
            write_ninja(dag, folder)
            tools[tool] = Ninja(folder, jobs, logs)
    return tools


def check_pipeline(binary, folder, logs, tag):
    seconds, code, rss = measure([str(binary), "check", "pipeline.kdl"], folder, logs / f"{tag}-check")
    if code != 0:
        fail(f"mustbuild check failed on {folder / 'pipeline.kdl'}:\n{tail(logs / f'{tag}-check.err')}")
    return seconds, rss


def bench_shape(shape, n, reps, args, tools_wanted, workdir, logs):
    tag = f"{shape}-{n}"
    t0 = time.perf_counter()
    dag = Dag(shape, n, args.seed)
    tools = setup(dag, workdir / tag, tools_wanted, args.mustbuild, args.jobs, logs, f"bench-{tag}")
    gen = time.perf_counter() - t0
    note = f"{dag.layers} layers, " if shape == "layered" else ""
    print(f"\n## {shape}, {dag.n} steps ({note}{dag.edges} edges), {reps} reps; generated in {gen:.2f} s", flush=True)
    if "mustbuild" in tools:
        s, _ = check_pipeline(args.mustbuild, tools["mustbuild"].folder, logs, tag)
        print(f"   mustbuild check: {s:.3f} s", flush=True)
    source, cone = dag.changed_source()
    print(f"   one-change edits {Dag.src_path(source)}: {len(cone)} steps downstream", flush=True)
    results = {t: {"cold": [], "noop": [], "one_change": []} for t in tools}
    for name, tool in tools.items():
        if isinstance(tool, Mustbuild):
            results[name]["summary_wall"] = {"cold": [], "noop": [], "one_change": []}
            # Whether the run was told a no-op by mustbuild's no-op record (summary field).
            results[name]["noop_record"] = {"noop": [], "one_change": []}
    reference = None
    for rep in range(reps):
        for name, tool in tools.items():
            r = results[name]
            # cold
            tool.clean()
            s, _ = tool.run("cold")
            after_cold = snapshot(tool.folder)
            missing = [i for i in range(dag.n) if f"{i}.txt" not in after_cold]
            if missing:
                fail(f"{name} cold run left {len(missing)} outputs missing (e.g. {Dag.out_path(missing[0])}) in {tool.folder}")
            if isinstance(tool, Mustbuild):
                tool.expect(dag.n, 0, "cold")
                r["summary_wall"]["cold"].append(tool.last_summary["wall_seconds"])
            if rep == 0:
                digest = outputs_digest(tool.folder, dag.n)
                if reference is None:
                    reference = (name, digest)
                elif digest != reference[1]:
                    fail(f"the outputs of {name} differ from those of {reference[0]} ({tool.folder})")
            r["cold"].append(s)
            # no-op
            s, _ = tool.run("noop")
            after_noop = snapshot(tool.folder)
            if after_noop != after_cold:
                changed = sum(1 for k, v in after_noop.items() if after_cold.get(k) != v)
                fail(f"{name} no-op run rewrote {changed} outputs in {tool.folder}")
            if isinstance(tool, Mustbuild):
                tool.expect(0, dag.n, "no-op")
                r["summary_wall"]["noop"].append(tool.last_summary["wall_seconds"])
                r["noop_record"]["noop"].append(tool.last_summary.get("noop_record"))
            r["noop"].append(s)
            # one change
            change_source(tool.folder, source, max(after_noop.values()))
            s, _ = tool.run("one-change")
            after_change = snapshot(tool.folder)
            rebuilt = {int(k[: -len(".txt")]) for k, v in after_change.items() if after_noop.get(k) != v}
            if rebuilt != cone:
                fail(
                    f"{name} one-change run rewrote {len(rebuilt)} outputs, expected the {len(cone)} "
                    f"downstream of {Dag.src_path(source)} ({len(rebuilt - cone)} unexpected, {len(cone - rebuilt)} missed) "
                    f"in {tool.folder}"
                )
            if isinstance(tool, Mustbuild):
                tool.expect(len(cone), dag.n - len(cone), "one-change")
                r["summary_wall"]["one_change"].append(tool.last_summary["wall_seconds"])
                r["noop_record"]["one_change"].append(tool.last_summary.get("noop_record"))
            r["one_change"].append(s)
            print(
                f"   rep {rep + 1}/{reps} {name:14s} cold {sig3(r['cold'][-1]):>7s}  no-op {sig3(r['noop'][-1]):>7s}"
                f"  one-change {sig3(r['one_change'][-1]):>7s} ({len(cone)} rebuilt)"
                + (f"  [no-op record used: {r['noop_record']['noop'][-1]}]" if isinstance(tool, Mustbuild) else ""),
                flush=True,
            )
    rows = []
    for name in tools:
        r = results[name]
        rows.append(
            {
                **row_head(shape, dag, name, args.jobs),
                "changed_source": Dag.src_path(source),
                "rebuilt_on_change": len(cone),
                "cold": median(r["cold"]),
                "noop": median(r["noop"]),
                "one_change": median(r["one_change"]),
                "samples": r,
            }
        )
    if not args.keep:
        shutil.rmtree(workdir / tag)
    return rows


def row_head(shape, dag, tool, jobs):
    """The fields every result row starts with: what ran, on which DAG."""
    return {
        "shape": shape,
        "steps": dag.n,
        "layers": dag.layers,
        "edges": dag.edges,
        "tool": tool,
        "shell": SHELLS[tool],
        "jobs": jobs,
    }


def bench_big(args, tools_wanted, workdir, logs):
    n = args.big
    wrapper = gnu_time()
    floor = measure(["true"], workdir, logs / "rss-floor", wrapper)[2]
    how = f"GNU time ({wrapper}), which forks the tool and reports its wait4 ru_maxrss" if wrapper else (
        "os.wait4 ru_maxrss of the child; GNU time is missing, so values at or below the floor are "
        "this Python process's peak, not the tool's (apt-get install time)"
    )
    print(f"\npeak RSS by {how}; `true` measures {floor} KiB this way", flush=True)
    tag = f"layered-{n}"
    t0 = time.perf_counter()
    dag = Dag("layered", n, args.seed)
    tools = setup(dag, workdir / tag, tools_wanted, args.mustbuild, args.jobs, logs, f"bench-{tag}")
    print(
        f"\n## layered, {dag.n} steps ({dag.layers} layers, {dag.edges} edges): cold once, no-op x{args.big_reps}; "
        f"generated in {time.perf_counter() - t0:.2f} s",
        flush=True,
    )
    rows = []
    for name, tool in tools.items():
        row = {
            **row_head("layered", dag, name, args.jobs),
            "rss_by": "GNU time %M (wait4 ru_maxrss)" if wrapper else "os.wait4 ru_maxrss",
            "rss_floor_kib": floor,
        }
        if isinstance(tool, Mustbuild):
            s, rss = check_pipeline(args.mustbuild, tool.folder, logs, tag)
            row["check"] = s
            row["check_peak_rss_kib"] = rss
            print(f"   mustbuild check: {s:.3f} s, peak RSS {rss / 1024:.0f} MiB", flush=True)
        tool.clean()
        s, rss = tool.run("cold", wrapper)
        after_cold = snapshot(tool.folder)
        if len(after_cold) != dag.n:
            fail(f"{name} cold run left {dag.n - len(after_cold)} outputs missing in {tool.folder}")
        if isinstance(tool, Mustbuild):
            tool.expect(dag.n, 0, "cold")
            row["cold_summary_wall"] = tool.last_summary["wall_seconds"]
        row["cold"] = s
        row["cold_peak_rss_kib"] = rss
        print(f"   {name:9s} cold {sig3(s)} s, peak RSS {rss / 1024:.0f} MiB", flush=True)
        noops, rsss, walls, records = [], [], [], []
        for rep in range(args.big_reps):
            s, rss = tool.run("noop", wrapper)
            if isinstance(tool, Mustbuild):
                tool.expect(0, dag.n, "no-op")
                walls.append(tool.last_summary["wall_seconds"])
                records.append(tool.last_summary.get("noop_record"))
            noops.append(s)
            rsss.append(rss)
            used = f" [no-op record used: {records[-1]}]" if isinstance(tool, Mustbuild) else ""
            print(f"   {name:9s} no-op {rep + 1}/{args.big_reps}: {sig3(s)} s, peak RSS {rss / 1024:.1f} MiB{used}", flush=True)
        if snapshot(tool.folder) != after_cold:
            fail(f"{name} no-op runs rewrote outputs in {tool.folder}")
        row["noop"] = median(noops)
        row["noop_peak_rss_kib"] = max(rsss)
        row["samples"] = {"noop": noops, "noop_rss_kib": rsss}
        if walls:
            row["samples"]["noop_summary_wall"] = walls
            row["samples"]["noop_record"] = records
        rows.append(row)
    if not args.keep:
        shutil.rmtree(workdir / tag)
    return rows


# ----------------------------------------------------------------------------
# Reporting


def ratio(row, ninja, key):
    if ninja is None or row.get(key) is None or not ninja.get(key):
        return "—"
    return f"{row[key] / ninja[key]:.2f}"


def table(rows):
    out = [
        "| shape | steps | tool | cold (s) | no-op (s) | one-change (s) | rebuilt | cold ÷ninja | no-op ÷ninja | one-change ÷ninja |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ninja = next((r for r in rows if r["tool"] == "ninja" and r["shape"] == row["shape"] and r["steps"] == row["steps"]), None)
        out.append(
            f"| {row['shape']} | {row['steps']:,} | {row['tool']} | {sig3(row['cold'])} | {sig3(row['noop'])} | "
            f"{sig3(row['one_change'])} | {row['rebuilt_on_change']:,} | {ratio(row, ninja, 'cold')} | "
            f"{ratio(row, ninja, 'noop')} | {ratio(row, ninja, 'one_change')} |"
        )
    return "\n".join(out)


def big_table(rows):
    out = [
        "| shape | steps | tool | check (s) | cold (s) | no-op (s) | no-op peak RSS (MiB) | no-op ÷ninja | RSS ÷ninja |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ninja = next((r for r in rows if r["tool"] == "ninja"), None)
    for row in rows:
        rss_ratio = "—" if ninja is None else f"{row['noop_peak_rss_kib'] / ninja['noop_peak_rss_kib']:.2f}"
        out.append(
            f"| {row['shape']} ({row['layers']} layers) | {row['steps']:,} | {row['tool']} | {sig3(row.get('check'))} | "
            f"{sig3(row['cold'])} | {sig3(row['noop'])} | {sig3(row['noop_peak_rss_kib'] / 1024)} | "
            f"{ratio(row, ninja, 'noop')} | {rss_ratio} |"
        )
    return "\n".join(out)


def version(argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "?"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="See the docstring of this file for details.")
    p.add_argument("--mustbuild", type=Path, default=DEFAULT_MUSTBUILD, help="the mustbuild binary [%(default)s]")
    p.add_argument("--jobs", "-j", type=int, default=2, help="-j for every tool [%(default)s]")
    p.add_argument("--sizes", default="1000,10000", help="comma-separated step counts [%(default)s]")
    p.add_argument("--shapes", default="wide,layered", help="comma-separated: wide, layered [%(default)s]")
    p.add_argument("--reps", type=int, help="repetitions [5 for sizes up to 1,000, else 3]")
    p.add_argument("--skip-100k", action="store_true", help="skip the big mustbuild-only pipeline")
    p.add_argument("--big", type=int, default=100_000, help="steps of the big layered pipeline [%(default)s]")
    p.add_argument("--big-reps", type=int, help="no-op repetitions of the big pipeline [--reps, else 3]")
    p.add_argument("--no-ninja", action="store_true", help="run without ninja")
    p.add_argument("--no-make", action="store_true", help="run without make (and make-bash)")
    p.add_argument(
        "--no-make-bash",
        action="store_true",
        help="run without make-bash (GNU make running each recipe as mustbuild does: bash -e -o pipefail -c)",
    )
    p.add_argument(
        "--no-mustbuild-bash",
        action="store_true",
        help="run without mustbuild-bash (every command through bash -e -o pipefail -c)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the layered fan-in [%(default)s]")
    p.add_argument("--workdir", type=Path, help="where to generate (kept) [a temporary folder, removed]")
    p.add_argument("--keep", action="store_true", help="keep the generated folders")
    p.add_argument("--json-out", type=Path, help="also write the results as JSON to this file")
    args = p.parse_args()

    args.mustbuild = args.mustbuild.resolve()
    if not args.mustbuild.is_file():
        fail(f"{args.mustbuild} not found: run `cargo build --release` in {REPO} (or pass --mustbuild PATH)")
    tools = ["mustbuild"]
    if not args.no_mustbuild_bash:
        tools.append("mustbuild-bash")
    if not args.no_make:
        if shutil.which("make") is None:
            fail("GNU make is needed (`apt-get install make`), or pass --no-make")
        tools.append("make")
        if not args.no_make_bash:
            tools.append("make-bash")
    if not args.no_ninja:
        if shutil.which("ninja") is None:
            fail("ninja is needed: `apt-get install ninja-build` (or pass --no-ninja)")
        tools.append("ninja")
    if shutil.which("cksum") is None:
        fail("cksum (coreutils) is needed")
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s]
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in ("wide", "layered"):
            fail(f"unknown shape {s!r} (wide, layered)")
    args.big_reps = args.big_reps or args.reps or 3

    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="compare-", dir=args.workdir)).resolve()
        args.keep = True
    else:
        workdir = Path(tempfile.mkdtemp(prefix="mustbuild-compare-")).resolve()
    logs = workdir / "logs"
    logs.mkdir()
    # A copy, so that a `cargo build` during the run cannot swap the binary underneath.
    (workdir / "bin").mkdir()
    binary = workdir / "bin" / "mustbuild"
    shutil.copy2(args.mustbuild, binary)
    print(f"mustbuild: {args.mustbuild} (copied to {binary})")
    args.mustbuild = binary

    env = {
        "mustbuild": version([str(args.mustbuild), "--version"]),
        "make": version(["make", "--version"]) if "make" in tools else None,
        "ninja": version(["ninja", "--version"]) if "ninja" in tools else None,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
    }
    print(f"# mustbuild vs make vs ninja ({'; '.join(f'{k}: {v}' for k, v in env.items() if v)})")
    print(f"workdir {workdir}; -j {args.jobs}; command in every step: `cksum IN... > OUT`")
    print("shells: " + "; ".join(f"{t}: {SHELLS[t]}" for t in tools) + "; make runs as `make -r -R`")

    started = time.perf_counter()
    rows, big_rows = [], []
    try:
        for n in sizes:
            reps = args.reps or (5 if n <= 1000 else 3)
            for shape in shapes:
                rows += bench_shape(shape, n, reps, args, tools, workdir, logs)
        if not args.skip_100k:
            big_tools = [t for t in tools if t in ("mustbuild", "ninja")]
            big_rows = bench_big(args, big_tools, workdir, logs)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started

    print(
        f"\n## Results (medians; -j {args.jobs}; mustbuild: no shell for a simple command; "
        "mustbuild-bash and make-bash: bash -e -o pipefail -c; make and ninja: /bin/sh -c)\n"
    )
    if rows:
        print(table(rows))
        print("\nrebuilt: steps downstream of the changed source (what every tool reran)")
    if big_rows:
        print()
        print(big_table(big_rows))
        print("\nno-op: median; no-op peak RSS: the largest, ru_maxrss (wait4) of the tool's process")
    print(f"\ntotal {total:.0f} s")
    if args.json_out:
        doc = {
            "command": sys.argv,
            "environment": env,
            "jobs": args.jobs,
            "seed": args.seed,
            "step_command": "cksum IN... > OUT",
            "shells": SHELLS,
            "results": rows,
            "big": big_rows,
            "total_seconds": total,
        }
        args.json_out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json_out}")


if __name__ == "__main__":
    main()
