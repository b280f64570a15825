#!/usr/bin/env bash
# GPU call: a CUPTI timeline (bench/trace/cupti_trace.c, staged by bench/trace/build.sh) of
# end-to-end generation, SDAR-8B shape, 64K prompt, dense then LoSA, 4 steps per block, and its
# per-step tables (bench/trace_summary.py). Results in $OUT/trace.tgz. About 3 minutes.
source "$(dirname "$0")/env.sh" trace
T=$PWD/.gpu/trace
N=${TRACE_PROMPT_TOKENS:-65536}
{ time CUDA_INJECTION64_PATH=$T/libcupti_trace.so LOSA_TRACE=$R/trace.txt \
    LD_LIBRARY_PATH=$T:$LD_LIBRARY_PATH timeout ${TRACE_TIMEOUT:-240} .gpu/losa bench generate \
    --device cuda-unfused --dtype bf16 --shape sdar8b --prompt-tokens $N --steps 4 --blocks 2 \
    --attention ${TRACE_ATTENTION:-dense,losa} --out $R/gen.json ; } > $R/gen.log 2>&1
python3 bench/trace_summary.py $R/trace.txt --detail 6 > $R/summary.txt 2>&1
gzip $R/trace.txt
