# Sourced by the GPU call scripts: unpacks the staged binaries (bench/gpu/stage.sh) and sets
# the CUDA library path. Leaves the shell in the repository root with $COMMIT and $NCU set and
# the results folder $R (under $OUT, the folder a call brings back) created.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
for f in losa bench-attention conformance model_conformance; do
    gunzip -c .gpu/$f.gz > .gpu/$f
    chmod +x .gpu/$f
done
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
COMMIT=$(cat .gpu/commit.txt)
# The card's short name (h100, h200) for result file names: timings compare within one card.
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader | grep -o 'H[0-9]*' | head -1 | tr A-Z a-z)
CALL=$1
R=$OUT/$CALL
mkdir -p "$R"
echo "$COMMIT" > "$R/commit.txt"
# Only a few files come back from a call: everything goes into one archive, rewritten after
# each step (`save`) and on exit, so that a call killed at its time limit keeps its finished
# steps (an exit trap alone does not run under SIGKILL).
save() { (cd "$OUT" && tar czf "$CALL.tgz.part" "$CALL" && mv "$CALL.tgz.part" "$CALL.tgz"); }
trap 'save; rm -rf "$OUT/$CALL"; exit' EXIT TERM
