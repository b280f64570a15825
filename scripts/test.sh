#!/usr/bin/env bash
# The project's test command (README.md; CI runs exactly this through .ci/run).
# Installs Mesa's software Vulkan driver when it is missing, so that the CubeCL kernels run on
# wgpu over lavapipe, then checks formatting and lints and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 || ! ldconfig -p | grep -q 'libvulkan.so.1'; then
    echo "installing Mesa's Vulkan driver (lavapipe) and the Vulkan loader"
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
# wgpu would otherwise look for a display server's runtime directory and complain.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

cargo fmt --all --check
cargo clippy --workspace --all-targets --features wgpu --locked -- -D warnings
cargo test --workspace --features wgpu --locked
