"""Histogram of per-read GC content, as a TSV of bins.

Usage: gc_histogram.py SAMPLE.fastq BINS OUT.tsv
"""
import sys


def main(fastq, bins, out):
    bins = int(bins)
    counts = [0] * bins
    with open(fastq) as f:
        for i, line in enumerate(f):
            if i % 4 == 1:
                seq = line.strip()
                frac = sum(1 for b in seq if b in "GCgc") / max(len(seq), 1)
                counts[min(int(frac * bins), bins - 1)] += 1
    with open(out, "w") as f:
        f.write("gc_from\tgc_to\treads\n")
        for i, n in enumerate(counts):
            f.write(f"{i / bins:.3f}\t{(i + 1) / bins:.3f}\t{n}\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
