#!/bin/sh
# Print the CUDA toolkit folder for CUDA_HOME. torch guesses it from `which nvcc`, which is wrong
# when nvcc on PATH is a wrapper script (`exec /opt/cuda-X/bin/nvcc "$@"`), so follow such wrappers.
if [ -n "$CUDA_HOME" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then echo "$CUDA_HOME"; exit 0; fi
nvcc=$(command -v nvcc 2>/dev/null) || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda; exit 0; }
real=$(readlink -f "$nvcc")
target=$(sed -n 's/^exec \([^ ]*nvcc\).*/\1/p' "$real" 2>/dev/null | head -n 1)
[ -n "$target" ] && real=$(readlink -f "$target")
dirname "$(dirname "$real")"
