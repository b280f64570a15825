#!/usr/bin/env python3
"""Per-opcode executed instructions and warp-stall samples of one kernel, from the CSV of
`ncu --import <report> --page source --print-source sass --csv` (a report taken with
`--section SourceCounters`), gzipped or not:

    python3 bench/sass_summary.py bench/results/ncu-frag-partials-sass-64k-h100.csv.gz --units 32768

`--units` divides the instruction counts (e.g. warps x tiles, for instructions per warp-tile).
"""
import argparse
import collections
import csv
import gzip
import io
import re


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--units", type=float, default=1.0)
    args = ap.parse_args()
    raw = gzip.open(args.csv, "rt") if args.csv.endswith(".gz") else open(args.csv)
    rows = list(csv.reader(io.StringIO(raw.read())))
    header = rows[1]
    col = {h: i for i, h in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    executed = collections.Counter()
    samples = collections.Counter()
    by_reason = collections.Counter()
    for r in rows[2:]:
        # "@P0 IMAD.WIDE ..." -> IMAD
        op = re.sub(r"^@!?U?P\w+\s+", "", r[col["Source"]].strip()).split(" ")[0].split(".")[0]
        executed[op] += int(r[col["Instructions Executed"]] or 0)
        samples[op] += int(r[col["Warp Stall Sampling (All Samples)"]] or 0)
        for h in reasons:
            by_reason[h] += int(r[col[h]] or 0)
    total, stalls = sum(executed.values()), sum(samples.values())
    print(f"kernel {rows[0][1]}: {total} warp instructions, {stalls} stall samples")
    print(f"{'opcode':10s} {'executed':>12s} {'per unit':>9s} {'samples':>8s}")
    for op, n in executed.most_common(24):
        print(f"{op:10s} {n:12d} {n / args.units:9.1f} {100 * samples[op] / stalls:7.1f}%")
    print("stall reasons:")
    for h, n in by_reason.most_common():
        if n:
            print(f"  {h:26s} {100 * n / stalls:5.1f}%")


if __name__ == "__main__":
    main()
