"""Writes a training result file from a run's `training.json`: the recipe as it ended, every
held-out evaluation, every Nth step record, and the device calls that made it.

    python3 bench/train_summary.py --run runs/retrieval/training.json --card "..." \
        --commit SHA --call "what call 1 ran" --call "..." --out bench/results/train-retrieval.json
"""

import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="the run's training.json")
    ap.add_argument("--card", required=True)
    ap.add_argument("--commit", required=True, help="commit of the binary that trained")
    ap.add_argument("--call", action="append", default=[], help="one device call, in order")
    ap.add_argument("--every", type=int, default=250, help="keep every Nth step record")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.run) as f:
        log = json.load(f)
    steps = [s for s in log["steps"] if s["step"] % args.every == 0]
    summary = {
        "card": args.card,
        "commit": args.commit,
        "steps_done": log["steps_done"],
        "training_seconds": log["seconds"],
        "config": log["config"],
        "calls": args.call,
        "evals": log["evals"],
        f"steps_every_{args.every}": steps,
    }
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
