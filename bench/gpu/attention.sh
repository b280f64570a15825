#!/usr/bin/env bash
# GPU call: the prefix-attention bench for every shape and its PyTorch SDPA anchor, merged into
# $R/attention-<card>.json (copy it to bench/results/, then `python3 bench/readme_tables.py`),
# and ncu per-kernel times of the steps at 64K (results in $OUT/attention.tgz). About 3 minutes.
source "$(dirname "$0")/env.sh" attention
B=".gpu/bench-attention --prefixes 4096,16384,32768,65536,131072 --budgets 128,256,512,1024 --pages 16"
for s in sdar-8b sdar-1.7b fast-dllm-v2-7b; do
    { time timeout 170 $B --shapes $s --out $R/rows-$s.json ; } > $R/bench-$s.log 2>&1
    save
done
{ time timeout 100 .gpu/bench-attention --shapes sdar-8b --prefixes 4096,16384,32768,65536,131072 \
    --budgets 256 --pages 32,64 --blocks 16 --out $R/rows-sdar-8b-pages.json ; } > $R/bench-pages.log 2>&1
save
{ time timeout 150 python3 bench/attention_anchor.py --rows $R/rows-*.json --out $R/attention-$CARD.json \
    --commit $COMMIT --command "bench-attention --shapes <shape> --prefixes 4096,16384,32768,65536,131072 --budgets 128,256,512,1024 --pages 16 (and --pages 32,64 --budgets 256 --blocks 16 on sdar-8b); python3 bench/attention_anchor.py --rows rows-*.json" ; } > $R/anchor.log 2>&1
save
# Skips the dense and Quest calls' launches; the window holds the LoSA steps.
timeout 120 $NCU --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread \
    --print-summary per-kernel --launch-skip 400 --launch-count 900 .gpu/bench-attention --quick \
    --out $R/ncu-rows.json --shapes sdar-8b --prefixes 65536 --budgets 256 --blocks 16 > $R/ncu.txt 2>&1
