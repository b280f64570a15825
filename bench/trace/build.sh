#!/usr/bin/env bash
# Builds the CUPTI timeline tracer (`cupti_trace.c`) into `.gpu/trace/` with the CUDA 13.0
# headers and libcupti of PyPI's wheels (cupti, runtime, crt; no CUDA toolkit needed here).
# On the GPU machine:
#   CUDA_INJECTION64_PATH=$PWD/.gpu/trace/libcupti_trace.so LOSA_TRACE=trace.txt \
#   LD_LIBRARY_PATH=$PWD/.gpu/trace:/usr/local/cuda/lib64 <any CUDA program>
set -euo pipefail
cd "$(dirname "$0")/../.."
W=target/cupti-wheels
if [ ! -f $W/nvidia/cu13/include/cupti.h ]; then
    mkdir -p $W
    pip download --quiet --no-deps -d $W "nvidia-cuda-cupti==13.0.*" "nvidia-cuda-runtime==13.0.*" \
        "nvidia-cuda-crt==13.0.*"
    (cd $W && for w in *.whl; do unzip -q -o "$w"; done)
fi
mkdir -p .gpu/trace
gcc -O2 -shared -fPIC -Wall -Wextra -o .gpu/trace/libcupti_trace.so bench/trace/cupti_trace.c \
    -I$W/nvidia/cu13/include -L$W/nvidia/cu13/lib -l:libcupti.so.13 -lpthread
cp $W/nvidia/cu13/lib/libcupti.so.13 .gpu/trace/
ls -la .gpu/trace
