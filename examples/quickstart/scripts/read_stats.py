"""Per-sample statistics of a FASTQ file: reads, bases, GC content, mean Phred quality.

Usage: read_stats.py SAMPLE.fastq OUT.tsv
"""
import sys


def main(fastq, out):
    reads = bases = gc = qual = 0
    with open(fastq) as f:
        while True:
            header = f.readline()
            if not header:
                break
            seq = f.readline().strip()
            f.readline()
            q = f.readline().strip()
            reads += 1
            bases += len(seq)
            gc += sum(1 for b in seq if b in "GCgc")
            qual += sum(ord(c) - 33 for c in q)
    with open(out, "w") as f:
        f.write("reads\tbases\tgc_percent\tmean_quality\n")
        f.write(f"{reads}\t{bases}\t{100 * gc / bases:.2f}\t{qual / bases:.2f}\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
