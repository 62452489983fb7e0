#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go, on a machine whose JAX sees a GPU, from the repository
# root (mixvae on PYTHONPATH or installed):   bench/gpu_check.sh OUT_DIR
# Writes the device and versions, then JSON lines of bench/data_parallel.py (quick and mnist_conv, training.devices
# = 1 and every local GPU) and bench/gpu_epoch.py (conv K = 20 at MNIST size, all decoded and top-2). The
# MNIST-sized generated IDX directory is made once and shared through $MIXVAE_DATA_DIR (the benches then name it
# "MNIST files in …": it holds the generated canvas digits, not MNIST).
set -u
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} > "$out/device.txt" 2>&1
data=$(mktemp -d)
python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from throughput import mnist_sized_idx; mnist_sized_idx(Path('$data'))" \
  > "$out/data.log" 2>&1
export MIXVAE_DATA_DIR="$data"
timeout 100 python3 bench/data_parallel.py --gpu > "$out/dp_quick.jsonl" 2> "$out/dp_quick.err"
timeout 150 python3 bench/data_parallel.py --gpu --config mnist_conv --epochs 3 > "$out/dp_mnist_conv.jsonl" 2> "$out/dp_mnist_conv.err"
timeout 280 python3 bench/gpu_epoch.py --gpu --epochs 2 --batch 128 > "$out/gpu_epoch.jsonl" 2> "$out/gpu_epoch.err"
echo "done: $(ls "$out")"
