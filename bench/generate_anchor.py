"""Adds what `losa bench generate` cannot see to its result file, in the same GPU call: the card,
its measured copy bandwidth (the byte floor of a step), and the peak GPU memory that nvidia-smi
sampled during the run. Also merges several per-prompt result files into one.

    python3 bench/generate_anchor.py --results gen-32768.json gen-65536.json \
        --memory mem-32768.csv mem-65536.csv --out generate-h100.json --command "..." --commit SHA
"""

import argparse
import os
import json
import subprocess

from attention_anchor import copy_bandwidth_gbs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True, nargs="+")
    ap.add_argument("--memory", required=True, nargs="+", help="nvidia-smi memory.used samples (MiB)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", required=True)
    args = ap.parse_args()
    merged = None
    samples = []
    for mem in args.memory:
        with open(mem) as f:
            samples += [int(x) for x in f.read().split() if x.strip().isdigit()]
    for path in args.results:
        with open(path) as f:
            data = json.load(f)
        if merged is None:
            merged = data
        else:
            merged["prefills"] += data["prefills"]
            merged["rows"] += data["rows"]
    name, total, driver = (
        subprocess.check_output(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        )
        .decode()
        .strip()
        # The card the bench ran on: the first visible one (nvidia-smi ignores
        # CUDA_VISIBLE_DEVICES, so take its first index from there).
        .splitlines()[int(os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0])]
        .split(", ")
    )
    merged.update(
        card=name,
        memory_total_mib=int(total),
        driver=driver,
        copy_bandwidth_gbs=copy_bandwidth_gbs(),
        peak_memory_mib=max(samples) if samples else None,
        command=args.command,
        commit=args.commit,
        peak_memory_note="nvidia-smi memory.used of the whole card, sampled every 250 ms over the run "
        "(model build, every prefill and generation, so the longest prompt's); cubecl keeps freed memory "
        "pooled, so this is what the process reserved, not what it held at once",
    )
    with open(args.out, "w") as f:
        json.dump(merged, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
