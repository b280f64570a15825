#!/usr/bin/env bash
# Session 15's first GPU call: model conformance (bf16), kernel conformance (bf16, f32), and
# the host profile of dense and LoSA generation steps (bench/gpu/host_profile.sh's runs).
# Results in $OUT/call1.tgz, rewritten after each step.
source "$(dirname "$0")/env.sh" call1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/card.txt
{ time LOSA_TEST_DTYPE=bf16 timeout 100 .gpu/model_conformance ; } > $R/model-conformance-bf16.txt 2>&1
save
{ time LOSA_TEST_DTYPE=bf16 timeout 150 .gpu/conformance ; } > $R/conformance-bf16.txt 2>&1
save
for mode in losa dense; do
    { time LOSA_HOST_PROFILE=$R/folded-$mode.txt timeout 90 .gpu/losa bench generate \
        --device cuda-unfused --dtype bf16 --shape sdar8b --prompt-tokens 8192 --steps 4 \
        --blocks 6 --attention $mode --out $R/gen-$mode.json ; } > $R/gen-$mode.log 2>&1
    save
done
{ time LOSA_TEST_DTYPE=f32 timeout 120 .gpu/conformance ; } > $R/conformance-f32.txt 2>&1
