#!/usr/bin/env bash
# Builds what `cargo xtask gpu-check` needs on a GPU machine that has no Rust, on a
# machine without a GPU: a CUDA build of xtask (stripped, gzipped) and Fashion-MNIST,
# in ./gpu-bundle (git-ignored), under 64 MiB together.
#
#   scripts/gpu-bundle.sh [CUDA_VERSION] [COMPUTE_CAP]     # defaults: 13.0 90
#
# CUDA_VERSION must not be newer than what the GPU machine's driver supports (driver
# 580 is CUDA 13.0): candle compiles its kernels to PTX at build time, and a driver
# cannot load PTX from a newer toolkit. COMPUTE_CAP is the GPU's (90: H100/H200).
#
# The toolkit comes from PyPI wheels into target/cuda-toolkit-VERSION. Linking needs the
# CUDA libraries under their plain names and libcuda, which only a driver installs:
# a stub libcuda.so defining every driver function cudarc declares stands in for it
# at link time, and the machine's real libcuda.so.1 is loaded at run time.
# docs/gpu.md ("Running gpu-check on a lent GPU machine") says how to run the bundle.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda=${1:-13.0}
cap=${2:-90}
out=gpu-bundle
mkdir -p "$out"

toolkit="target/cuda-toolkit-$cuda"
if [ ! -x "$toolkit/bin/pip" ]; then
    python3 -m venv "$toolkit"
fi
"$toolkit/bin/pip" install --quiet --retries 5 "nvidia-cuda-nvcc==$cuda.*" "nvidia-nvvm==$cuda.*" \
    "nvidia-cuda-runtime==$cuda.*" "nvidia-cuda-crt==$cuda.*" "nvidia-cuda-nvrtc==$cuda.*" \
    nvidia-cuda-cccl "nvidia-cublas==${cuda%%.*}.*" "nvidia-curand==10.*"
CUDA_HOME=$(cd "$toolkit"/lib/python3*/site-packages/nvidia/cu"${cuda%%.*}" && pwd)
lib="$CUDA_HOME/lib"
for name in cublas cublasLt cudart nvrtc; do
    ln -sf "$(basename "$(ls "$lib"/lib$name.so.* | head -1)")" "$lib/lib$name.so"
done
ln -sf "$(basename "$(ls "$lib"/libcurand.so.* | head -1)")" "$lib/libcurand.so"

# The driver stub: one empty function per `cu*` function of cudarc's driver bindings.
cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* | tail -1)
grep -ohE '^pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc/src/driver/sys/mod.rs" |
    awk '{print "void " $4 "(void) {}"}' | sort -u >"$toolkit/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$lib/libcuda.so" "$toolkit/libcuda-stub.c"

export CUDA_HOME CUDA_PATH="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH" CUDA_COMPUTE_CAP="$cap"
CARGO_TARGET_DIR="target/cuda-$cuda-sm$cap" cargo build --release -p xtask --features cuda
strip -o "$out/xtask" "target/cuda-$cuda-sm$cap/release/xtask"
gzip -9 -f "$out/xtask"

# The dataset gpu-check trains on (Debian's package, or a verified download).
data=$(cargo xtask data fetch fashion-mnist | tail -1)
mkdir -p "$out/fashion-mnist"
cp "$data"/*-ubyte* "$out/fashion-mnist/"

echo "bundle: $(du -sh "$out/xtask.gz" "$out/fashion-mnist" | awk '{print $2 " " $1}' | tr "\n" " ")"
