#!/usr/bin/env bash
# GPU call: where the host's time goes while it issues generation steps (the LoSA step is
# host-bound at long context: bench/results/trace-generate-64k-h100.txt). Samples the host
# threads (`LOSA_HOST_PROFILE`, the `host-profile` feature stage.sh builds with) during an
# SDAR-8B generation at a short prompt (host issue cost does not depend on the prefix length),
# LoSA then dense, and folds the stacks into per-function tables (bench/host_profile_summary.py).
# Results in $OUT/host.tgz. About a minute.
source "$(dirname "$0")/env.sh" host
N=${HOST_PROMPT_TOKENS:-8192}
for mode in losa dense; do
    { time LOSA_HOST_PROFILE=$R/folded-$mode.txt timeout 90 .gpu/losa bench generate \
        --device cuda-unfused --dtype bf16 --shape sdar8b --prompt-tokens $N --steps 4 \
        --blocks 6 --attention $mode --out $R/gen-$mode.json ; } > $R/gen-$mode.log 2>&1
    python3 bench/host_profile_summary.py $R/folded-$mode.txt --top 60 > $R/summary-$mode.txt 2>&1
    save
done
