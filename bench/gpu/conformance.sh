#!/usr/bin/env bash
# GPU call: the model conformance in bf16, then the conformance suite on CUDA in bf16 and f32
# (results in $OUT/conformance.tgz). About 3 minutes.
source "$(dirname "$0")/env.sh" conformance
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > $R/card.txt
{ time LOSA_TEST_DTYPE=bf16 timeout 100 .gpu/model_conformance ; } > $R/model-conformance-bf16.txt 2>&1
save
for dtype in bf16 f32; do
    { time LOSA_TEST_DTYPE=$dtype timeout 150 .gpu/conformance ; } > $R/conformance-$dtype.txt 2>&1
    save
done
