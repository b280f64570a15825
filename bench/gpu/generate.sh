#!/usr/bin/env bash
# GPU call: end-to-end generation without burn-fusion, SDAR-8B shape, 64K then 32K prompts,
# with nvidia-smi memory samples, merged into $R/generate-h100-unfused.json (results in
# $OUT/generate.tgz). About 4 minutes.
source "$(dirname "$0")/env.sh" generate
for n in 65536 32768; do
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > $R/mem-$n.csv &
    SAMPLER=$!
    { time timeout 330 .gpu/losa bench generate --device cuda-unfused --dtype bf16 --shape sdar8b \
        --prompt-tokens $n --steps 4,8 --blocks 3 --out $R/gen-$n.json ; } > $R/gen-$n.log 2>&1
    kill $SAMPLER
    save
done
python3 bench/generate_anchor.py --results $R/gen-65536.json $R/gen-32768.json \
    --memory $R/mem-65536.csv $R/mem-32768.csv --out $R/generate-h100-unfused.json \
    --command "losa bench generate --device cuda-unfused --dtype bf16 --shape sdar8b --prompt-tokens <65536, then 32768> --steps 4,8 --blocks 3" \
    --commit $COMMIT > $R/anchor.log 2>&1
