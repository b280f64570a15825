#!/usr/bin/env bash
# Builds the CUDA binaries here (no GPU needed: cubecl loads libcuda and NVRTC at run time) and
# stages them, stripped and gzipped, in the git-ignored `.gpu/` folder that a GPU call carries.
#
#   bash bench/gpu/stage.sh            # then, on the GPU machine: bash bench/gpu/<call>.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda,host-profile \
    --bin losa --example bench-attention --test conformance --test model_conformance
T=target/release
mkdir -p .gpu
cp $T/losa .gpu/losa
cp $T/examples/bench-attention .gpu/bench-attention
# The test binaries carry a hash in their names: the newest of each.
cp "$(ls -t $T/deps/conformance-* | grep -v '\.d$' | head -1)" .gpu/conformance
cp "$(ls -t $T/deps/model_conformance-* | grep -v '\.d$' | head -1)" .gpu/model_conformance
for f in losa bench-attention conformance model_conformance; do
    strip --strip-debug .gpu/$f
    gzip -f .gpu/$f
done
git rev-parse --short HEAD > .gpu/commit.txt
ls -la .gpu
