"""Gathers `losa eval` result files of several checkpoints into one file, labelled.

    python3 bench/merge_evals.py --note "..." --eval NAME=eval.json [--eval ...] --out merged.json
"""

import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", action="append", required=True, help="LABEL=path of a losa eval result")
    ap.add_argument("--note", default="", help="what the labels are")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    merged = {"note": args.note, "checkpoints": {}}
    for item in args.eval:
        label, path = item.split("=", 1)
        with open(path) as f:
            merged["checkpoints"][label] = json.load(f)
    with open(args.out, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
