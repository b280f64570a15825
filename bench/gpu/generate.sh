#!/usr/bin/env bash
# GPU call: end-to-end generation, SDAR-8B shape, 64K then 32K prompts, with nvidia-smi memory
# samples, merged into $R/generate-<card>-unfused.json (without burn-fusion, every tensor op its
# own kernel) and, with GEN_FUSED=1, $R/generate-<card>.json (burn's default CUDA backend, with
# fusion; GEN_FUSED_PROMPTS, default 65536). Results in $OUT/generate.tgz. About 3 minutes
# unfused, 2-3 more fused.
source "$(dirname "$0")/env.sh" generate
run() { # device, prompt tokens, tag
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > $R/mem-$3.csv &
    local sampler=$!
    { time timeout 330 .gpu/losa bench generate --device $1 --dtype bf16 --shape sdar8b \
        --prompt-tokens $2 --steps 4,8 --blocks 3 --out $R/gen-$3.json ; } > $R/gen-$3.log 2>&1
    kill $sampler
    save
}
anchor() { # device, result name, prompt lengths as the command took them, tags...
    local device=$1 out=$2 prompts=$3 results=() memory=()
    shift 3
    for t in "$@"; do results+=($R/gen-$t.json); memory+=($R/mem-$t.csv); done
    python3 bench/generate_anchor.py --results "${results[@]}" --memory "${memory[@]}" \
        --out $R/$out --commit $COMMIT \
        --command "losa bench generate --device $device --dtype bf16 --shape sdar8b --prompt-tokens $prompts --steps 4,8 --blocks 3" \
        >> $R/anchor.log 2>&1
    save
}
for n in 65536 32768; do run cuda-unfused $n unfused-$n; done
anchor cuda-unfused generate-$CARD-unfused.json "<65536, then 32768>" unfused-65536 unfused-32768
if [ "${GEN_FUSED:-0}" = 1 ]; then
    tags=()
    for n in ${GEN_FUSED_PROMPTS:-65536}; do run cuda $n fused-$n; tags+=(fused-$n); done
    anchor cuda generate-$CARD.json "<${GEN_FUSED_PROMPTS:-65536}>" "${tags[@]}"
fi
