"""Regenerates the README's tables from the committed result files (never typed by hand).

    python3 bench/readme_tables.py        (rewrites the sections between the README's markers)

- attention-table: bench/results/attention-h100.json (`examples/bench-attention.rs` + `bench/attention_anchor.py`)
- eval-table: bench/results/eval-retrieval-dense.json (`losa eval --attention dense`, every length),
  bench/results/eval-retrieval.json (`losa eval --sweep`) and bench/results/eval-retrieval-static.json
  (`losa eval --sweep --policy low_confidence_static --steps 4`)
- generate-table: bench/results/generate-h100.json (`losa bench generate` + `bench/generate_anchor.py`)
- generate-unfused-table: bench/results/generate-h100-unfused.json (the same with `--device cuda-unfused`)
- variants-table: bench/results/train-retrieval-variants.json (`bench/merge_evals.py` over `losa eval` results)
- matmul-table: bench/results/matmul-h100.json (`losa bench matmul`, with the card and commit of its call added)
- matmul-prefill-table: the rows past 32 of bench/results/matmul-prefill-h100.json (the same, `--rows 16,32,512,2048`)
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "bench", "results", "attention-h100.json")
START, END = "<!-- attention-table:start -->", "<!-- attention-table:end -->"
EVAL_RESULTS = [
    os.path.join(ROOT, "bench", "results", name)
    for name in ("eval-retrieval-dense.json", "eval-retrieval.json", "eval-retrieval-static.json")
]
EVAL_START, EVAL_END = "<!-- eval-table:start -->", "<!-- eval-table:end -->"
GEN_RESULT = os.path.join(ROOT, "bench", "results", "generate-h100.json")
GEN_START, GEN_END = "<!-- generate-table:start -->", "<!-- generate-table:end -->"
GEN_UNFUSED_RESULT = os.path.join(ROOT, "bench", "results", "generate-h100-unfused.json")
GEN_UNFUSED_START = "<!-- generate-unfused-table:start -->"
GEN_UNFUSED_END = "<!-- generate-unfused-table:end -->"
VARIANTS_RESULT = os.path.join(ROOT, "bench", "results", "train-retrieval-variants.json")
VARIANTS_START, VARIANTS_END = "<!-- variants-table:start -->", "<!-- variants-table:end -->"
MATMUL_RESULT = os.path.join(ROOT, "bench", "results", "matmul-h100.json")
MATMUL_START, MATMUL_END = "<!-- matmul-table:start -->", "<!-- matmul-table:end -->"
MATMUL_PREFILL_RESULT = os.path.join(ROOT, "bench", "results", "matmul-prefill-h100.json")
MATMUL_PREFILL_START, MATMUL_PREFILL_END = "<!-- matmul-prefill-table:start -->", "<!-- matmul-prefill-table:end -->"


def table(data, budget=256, page=16):
    rows = data["rows"]

    def find(**kw):
        hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
        return hits[0] if hits else None

    out = [
        f"{data['card']} (driver {data['driver']}, copy bandwidth {data['copy_bandwidth_gbs']:.0f} GB/s), "
        f"bf16 K/V, batch 1, clustered keys, page {page}, budget {budget}, LoSA top-5 (B=16) / top-10 (B=32); "
        f"commit `{data['commit']}`. Times in µs; density = loaded prefix tokens / prefix tokens (measured).",
        "",
        "| shape | B | prefix | SDPA flash | dense (ours) | Quest | Quest density | LoSA step ≥ 1 | LoSA density "
        "| LoSA block avg (4 steps) | LoSA floor | LoSA vs SDPA | LoSA vs dense |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    shapes = sorted({r["shape"] for r in rows})
    for shape in shapes:
        for block in sorted({r["block"] for r in rows if r["shape"] == shape}):
            for prefix in sorted({r["prefix"] for r in rows if r["shape"] == shape}):
                sdpa = find(shape=shape, block=block, prefix=prefix, mode="sdpa_flash")
                dense = find(shape=shape, block=block, prefix=prefix, mode="dense", page=page)
                quest = find(shape=shape, block=block, prefix=prefix, mode="quest", budget=budget, page=page)
                losa = find(shape=shape, block=block, prefix=prefix, mode="losa", budget=budget, page=page, step="ge1")
                avg = find(shape=shape, block=block, prefix=prefix, mode="losa", budget=budget, page=page,
                           step="block_avg_4")
                if not all([sdpa, dense, quest, losa, avg]):
                    continue
                out.append(
                    f"| {shape} | {block} | {prefix // 1024}K | {sdpa['time_us']:.0f} | {dense['time_us']:.0f} "
                    f"| {quest['time_us']:.0f} | {quest['density']:.3f} | {losa['time_us']:.0f} | {losa['density']:.3f} "
                    f"| {avg['time_us']:.0f} | {losa['floor_us']:.1f} | {sdpa['time_us'] / losa['time_us']:.2f}x "
                    f"| {dense['time_us'] / losa['time_us']:.2f}x |")
    return "\n".join(out)


def backend_name(backend):
    """A readable name of a burn backend type name (CubeCL backends say whether burn-fusion wraps them)."""
    for key, name in (("Cuda", "CUDA"), ("Wgpu", "wgpu"), ("NdArray", "NdArray (CPU)")):
        if key in backend:
            if key == "NdArray":
                return name
            return name + (" with burn-fusion" if "Fusion<" in backend else " without burn-fusion")
    return backend


def eval_table(data):
    runs = data["runs"]
    pct = lambda r: f"{100 * r['accuracy']:.1f}"
    def dens(r):
        if r["mean_density"] is None:
            return "-"
        after = r.get("mean_density_after_first_step")
        return f"{r['mean_density']:.3f}" + ("" if after is None else f" / {after:.3f}")

    out = [
        f"Model `{os.path.relpath(data['model'], ROOT) if os.path.isabs(data['model']) else data['model']}`, "
        f"{backend_name(data['backend'])}, block {data['block_size']}, {data['steps']} steps per block "
        f"({data['policy']}, threshold {data['threshold']:.2g}), page {data['page_size']}, "
        f"{data['dense_layers']} leading dense layer(s); held-out sets of fixed seeds. "
        "Exact match in %, measured KV density in parentheses"
        + (
            " (sparse layers; over all steps / over the steps after each block's first)."
            if any("mean_density_after_first_step" in r for r in runs)
            else "."
        ),
        "",
    ]
    for context in sorted({r["context"] for r in runs}):
        at = [r for r in runs if r["context"] == context]
        dense = [r for r in at if r["attention"] == "dense"]
        actives = sorted({r["active"] for r in at if r["attention"] == "losa"})
        budgets = sorted({r["budget"] for r in at if r["budget"] is not None})
        items = at[0]["items"]
        head = f"**{context} tokens** ({items} items, prompts {at[0]['mean_prompt_tokens']:.0f} tokens on average)"
        if dense:
            head += f": dense {pct(dense[0])}%"
        out += [head, ""]
        if not budgets:
            continue
        out.append("| budget | Quest | " + " | ".join(f"LoSA k={k}" for k in actives) + " |")
        out.append("| --- | --- | " + " | ".join("---" for _ in actives) + " |")
        for b in budgets:
            quest = [r for r in at if r["attention"] == "quest" and r["budget"] == b]
            cells = [f"{pct(quest[0])} ({dens(quest[0])})" if quest else "-"]
            for k in actives:
                losa = [r for r in at if r["attention"] == "losa" and r["budget"] == b and r["active"] == k]
                cells.append(f"{pct(losa[0])} ({dens(losa[0])})" if losa else "-")
            out.append(f"| {b} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def generate_table(data):
    rows = data["rows"]
    bw = data["copy_bandwidth_gbs"]
    kv = data["kv_bytes_per_token"]
    weights = data["weights_bytes"]
    gib = 1 << 30

    def find(n, mode, steps):
        hits = [r for r in rows if r["prompt_tokens"] == n and r["attention"] == mode and r["steps"] == steps]
        return hits[0] if hits else None

    out = [
        f"{data['card']} (driver {data['driver']}, copy bandwidth {bw:.0f} GB/s), {backend_name(data['backend'])}, "
        f"`{data['shape']}` shape with random "
        f"{data['dtype']} weights ({weights / gib:.1f} GiB; KV {kv / 1024:.0f} KiB per token), block "
        f"{data['block_size']}, fixed quotas, budget {data['budget']}, page {data['page_size']}, LoSA top-"
        f"{data['active']}, {data['dense_layers']} dense layers; commit `{data['commit']}`. ms per denoising step "
        "(commit passes included); tokens/s of decoding; floor = (weights + KV) / copy bandwidth; shares from a "
        "second, profiled run (device sync after every part).",
        "",
        "| prompt | steps/block | dense ms/step | Quest ms/step | LoSA ms/step | dense floor ms | dense tok/s "
        "| LoSA tok/s | LoSA vs dense | dense attn / MLP / rest | LoSA attn / MLP / rest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    share = lambda r: f"{r['attention_share']:.0%} / {r['mlp_share']:.0%} / {r['rest_share']:.0%}"
    for n in sorted({r["prompt_tokens"] for r in rows}):
        for steps in sorted({r["steps"] for r in rows}):
            d, q, l = (find(n, m, steps) for m in ("dense", "quest", "losa"))
            if not d or not l:
                continue
            floor = (weights + kv * n) / (bw * 1e9) * 1e3
            out.append(
                f"| {n // 1024}K | {steps} | {d['ms_per_step']:.1f} | {q['ms_per_step'] if q else float('nan'):.1f} "
                f"| {l['ms_per_step']:.1f} | {floor:.1f} | {d['tokens_per_s']:.1f} | {l['tokens_per_s']:.1f} "
                f"| {l['tokens_per_s'] / d['tokens_per_s']:.2f}x | {share(d)} | {share(l)} |"
            )
    out.append("")
    for p in data["prefills"]:
        out.append(
            f"- {p['prompt_tokens'] // 1024}K prompt: prefill {p['prefill_ms'] / 1e3:.1f} s (shared by every run); "
            f"weights {weights / gib:.1f} GiB + KV cache {kv * p['prompt_tokens'] / gib:.1f} GiB."
        )
    out.append(
        f"- Peak card memory over the run (nvidia-smi, memory pooled by cubecl): "
        f"{data['peak_memory_mib'] / 1024:.1f} GiB of {data['memory_total_mib'] / 1024:.0f} GiB."
    )
    return "\n".join(out)


def variants_table(data):
    checkpoints = data["checkpoints"]
    lengths = sorted({r["context"] for v in checkpoints.values() for r in v["runs"]})
    out = [
        data["note"],
        "",
        "| checkpoint | items per length | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
        "| --- | --- | " + " | ".join("---" for _ in lengths) + " |",
    ]
    for label, v in checkpoints.items():
        dense = [r for r in v["runs"] if r["attention"] == "dense"]
        acc = {r["context"]: r["accuracy"] for r in dense}
        items = "/".join(str(n) for n in sorted({r["items"] for r in dense}))
        cells = [f"{100 * acc[n]:.1f}" if n in acc else "-" for n in lengths]
        out.append(f"| {label} | {items} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def matmul_table(data, min_rows=0):
    out = [
        f"{data['card']}, {backend_name(data['backend'])}, commit `{data['commit']}`, `{data['shape']}` projections, "
        f"{data['dtype']} weights as transposed `[out, in]` views, mean of "
        f"{data['iterations']} runs after one untimed; GB/s = weight bytes / time, TFLOPS = 2 rows k n / time. "
        "\"losa\" is `ops::weight_matmul` (the few-row kernels up to 32 rows, the tiled kernel past them) "
        "and the one-launch ops of its row.",
        "",
        "| rows | weight | k x n | losa µs | losa GB/s | losa TFLOPS | burn matmul µs | burn GB/s | burn TFLOPS | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["rows"]:
        if r["rows"] < min_rows:
            continue
        flops = 2 * r["rows"] * r["k"] * r["n"]
        out.append(
            f"| {r['rows']} | {r['weight']} | {r['k']} x {r['n']} | {r['few_row_us']:.1f} | {r['few_row_gb_s']:.0f} "
            f"| {flops / r['few_row_us'] / 1e6:.1f} | {r['burn_us']:.1f} | {r['burn_gb_s']:.0f} "
            f"| {flops / r['burn_us'] / 1e6:.1f} | {r['speedup']:.2f}x |"
        )
    return "\n".join(out)


def replace(readme, start, end, body):
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + body + "\n" + end + tail


def main():
    readme_path = os.path.join(ROOT, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    with open(RESULT) as f:
        readme = replace(readme, START, END, table(json.load(f)))
    evals = [path for path in EVAL_RESULTS if os.path.exists(path)]
    if evals and EVAL_START in readme:
        tables = []
        for path in evals:
            with open(path) as f:
                tables.append(f"From `bench/results/{os.path.basename(path)}`: " + eval_table(json.load(f)))
        readme = replace(readme, EVAL_START, EVAL_END, "\n\n".join(tables))
    if os.path.exists(GEN_RESULT) and GEN_START in readme:
        with open(GEN_RESULT) as f:
            readme = replace(readme, GEN_START, GEN_END, generate_table(json.load(f)))
    if os.path.exists(GEN_UNFUSED_RESULT) and GEN_UNFUSED_START in readme:
        with open(GEN_UNFUSED_RESULT) as f:
            readme = replace(readme, GEN_UNFUSED_START, GEN_UNFUSED_END, generate_table(json.load(f)))
    if os.path.exists(VARIANTS_RESULT) and VARIANTS_START in readme:
        with open(VARIANTS_RESULT) as f:
            readme = replace(readme, VARIANTS_START, VARIANTS_END, variants_table(json.load(f)))
    if os.path.exists(MATMUL_RESULT) and MATMUL_START in readme:
        with open(MATMUL_RESULT) as f:
            readme = replace(readme, MATMUL_START, MATMUL_END, matmul_table(json.load(f)))
    if os.path.exists(MATMUL_PREFILL_RESULT) and MATMUL_PREFILL_START in readme:
        with open(MATMUL_PREFILL_RESULT) as f:
            # The prefill chunks' rows only: its block rows were bound by that machine's host.
            prefill_rows = matmul_table(json.load(f), min_rows=33)
        readme = replace(readme, MATMUL_PREFILL_START, MATMUL_PREFILL_END, prefill_rows)
    with open(readme_path, "w") as f:
        f.write(readme)


if __name__ == "__main__":
    main()
