#!/usr/bin/env bash
# GPU call: the weight matmuls on the SDAR-8B shape through `ops::weight_matmul` and burn's
# matmul, a denoising block's rows (16, 32) and a prefill chunk's (512, 2048), merged into
# $R/matmul-<card>.json (results in $OUT/matmul.tgz). About a minute.
source "$(dirname "$0")/env.sh" matmul
{ time timeout 150 .gpu/losa bench matmul --device cuda-unfused --dtype bf16 --shape sdar8b \
    --rows 16,32,512,2048 --out $R/matmul-$CARD.json ; } > $R/matmul.log 2>&1
save
