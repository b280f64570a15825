"""Regenerates the README's benchmark table from the committed result file (never typed by hand).

    python3 bench/readme_tables.py        (rewrites the section between the README's markers)
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "bench", "results", "attention-h100.json")
START, END = "<!-- attention-table:start -->", "<!-- attention-table:end -->"


def table(data, budget=256, page=16):
    rows = data["rows"]

    def find(**kw):
        hits = [r for r in rows if all(r.get(k) == v for k, v in kw.items())]
        return hits[0] if hits else None

    out = [
        f"H100 ({data['card']}, driver {data['driver']}, copy bandwidth {data['copy_bandwidth_gbs']:.0f} GB/s), "
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


def main():
    with open(RESULT) as f:
        data = json.load(f)
    readme_path = os.path.join(ROOT, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(readme_path, "w") as f:
        f.write(head + START + "\n" + table(data) + "\n" + END + tail)


if __name__ == "__main__":
    main()
