"""PyTorch anchors for the attention benchmark, run in the same GPU call as the Rust program.

Times `scaled_dot_product_attention` (flash backend) of one block over [prefix ; block] keys for
the shapes and prefixes of the Rust rows, measures the card's copy bandwidth, and merges
everything into `bench/results/attention-<card>.json` (BENCHMARKS.md): every row gets
`floor_us = bytes / copy bandwidth`.

    python3 bench/attention_anchor.py --rows rows-*.json --out attention-h100.json --command "..."
"""

import argparse
import json
import math
import subprocess

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {"sdar-1.7b": (16, 8, 128), "sdar-8b": (32, 8, 128), "fast-dllm-v2-7b": (28, 4, 128)}


def median_us(fn, batches=7, per_batch=20):
    """Median per-call time of batches of calls between synchronisations, after a warm-up."""
    for _ in range(per_batch):
        fn(0)
    torch.cuda.synchronize()
    samples, i = [], 0
    for _ in range(batches):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(per_batch):
            fn(i)
            i += 1
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / per_batch)
    samples.sort()
    return samples[len(samples) // 2]


def copy_bandwidth_gbs():
    """Device-to-device copy of 1 GiB: bytes read plus bytes written over time."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    t = median_us(lambda i: b.copy_(a), batches=5, per_batch=10)
    return 2 * n / (t * 1e-6) / 1e9


def sdpa_us(hq, hkv, d, block, prefix, dtype):
    kv_bytes = 2 * (prefix + block) * hkv * d * 2
    copies = max(2, min(8, math.ceil((256 << 20) / kv_bytes)))
    q = torch.randn(1, hq, block, d, device="cuda", dtype=dtype)
    kvs = [
        (torch.randn(1, hkv, prefix + block, d, device="cuda", dtype=dtype),
         torch.randn(1, hkv, prefix + block, d, device="cuda", dtype=dtype))
        for _ in range(copies)
    ]

    def run(i):
        k, v = kvs[i % copies]
        torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return median_us(run)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", required=True, nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--commit", required=True)
    args = ap.parse_args()
    rows, rust_device = [], None
    for path in args.rows:
        with open(path) as f:
            rust = json.load(f)
        rows += rust["rows"]
        rust_device = rust["device"]
    card = torch.cuda.get_device_name(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    driver = driver.splitlines()[0] if driver else "unknown"  # one line per GPU of the host
    bw = copy_bandwidth_gbs()
    dtype = torch.bfloat16
    seen = set()
    for r in list(rows):
        key = (r["shape"], r["prefix"], r["block"])
        if key in seen:
            continue
        seen.add(key)
        hq, hkv, d = SHAPES[r["shape"]]
        t = sdpa_us(hq, hkv, d, r["block"], r["prefix"], dtype)
        rows.append({"shape": r["shape"], "mode": "sdpa_flash", "prefix": r["prefix"], "block": r["block"],
                     "budget": None, "page": None, "active": r["block"], "step": "ge1", "time_us": t,
                     "density": 1.0, "bytes": 2 * r["prefix"] * hkv * d * 2, "keys": "random", "dtype": "bf16"})
        print(f"sdpa {r['shape']} n={r['prefix']} B={r['block']}: {t:.1f} us", flush=True)
    for r in rows:
        r["floor_us"] = None if r.get("bytes") is None else r["bytes"] / (bw * 1e9) * 1e6
        r["bandwidth_gbs"] = None if r.get("bytes") is None else r["bytes"] / (r["time_us"] * 1e-6) / 1e9
    out = {"commit": args.commit, "card": card, "driver": driver, "command": args.command,
           "copy_bandwidth_gbs": bw, "torch": torch.__version__, "rust_device": rust_device, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"copy bandwidth {bw:.0f} GB/s; wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
