#!/usr/bin/env bash
# GPU call: the conformance suite on CUDA in bf16 and f32, and the model conformance in bf16
# (results in $OUT/conformance.tgz).
source "$(dirname "$0")/env.sh" conformance
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/card.txt
for dtype in bf16 f32; do
    { time LOSA_TEST_DTYPE=$dtype timeout 200 .gpu/conformance ; } > $R/conformance-$dtype.txt 2>&1
    save
done
{ time LOSA_TEST_DTYPE=bf16 timeout 120 .gpu/model_conformance ; } > $R/model-conformance-bf16.txt 2>&1
