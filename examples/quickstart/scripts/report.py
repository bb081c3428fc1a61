"""Gathers per-sample statistics into one Markdown report.

Usage: report.py GENOME_STATS.tsv OUT.md SAMPLE_STATS.tsv...
"""
import os
import sys


def read_tsv(path):
    with open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        return [dict(zip(header, line.rstrip("\n").split("\t"))) for line in f]


def main(genome, out, *samples):
    g = read_tsv(genome)
    lines = ["# Read statistics", ""]
    for row in g:
        lines.append(f"Reference `{row['sequence']}`: {row['length']} bp, {row['gc_percent']}% GC.")
    lines += ["", "| sample | reads | bases | GC % | mean quality | GC vs reference |", "|---|---|---|---|---|---|"]
    ref_gc = float(g[0]["gc_percent"])
    for path in sorted(samples):
        name = os.path.basename(path).split(".")[0]
        s = read_tsv(path)[0]
        delta = float(s["gc_percent"]) - ref_gc
        lines.append(f"| {name} | {s['reads']} | {s['bases']} | {s['gc_percent']} | {s['mean_quality']} | {delta:+.2f} |")
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
