"""Length and GC content of each sequence of a FASTA file.

Usage: genome_stats.py GENOME.fa OUT.tsv
"""
import sys


def main(fasta, out):
    seqs = {}
    name = None
    with open(fasta) as f:
        for line in f:
            line = line.strip()
            if line.startswith(">"):
                name = line[1:].split()[0]
                seqs[name] = [0, 0]
            elif name is not None:
                seqs[name][0] += len(line)
                seqs[name][1] += sum(1 for b in line if b in "GCgc")
    with open(out, "w") as f:
        f.write("sequence\tlength\tgc_percent\n")
        for name, (length, gc) in seqs.items():
            f.write(f"{name}\t{length}\t{100 * gc / length:.2f}\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
