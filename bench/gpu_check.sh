#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one go, on a machine whose JAX sees a GPU, from the repository
# root (mixvae on PYTHONPATH or installed):   bench/gpu_check.sh OUT_DIR
# Writes the device and versions, then JSON lines of bench/gpu_epoch.py (conv K = 20 at MNIST size, top-2 and
# all decoded, the decoder in float32 and in bfloat16: the targets of the speed work) and bench/data_parallel.py (quick, training.devices = 1 and every
# local GPU). The MNIST-sized generated IDX directory is made here unless $MIXVAE_DATA_DIR already holds one
# (bench/throughput.py's mnist_sized_idx writes it; gzipped it is 15 MB and travels well); the benches then
# name it "MNIST files in …": it holds the generated canvas digits, not MNIST.
set -u
out=${1:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/device.txt"
if [ -z "${MIXVAE_DATA_DIR:-}" ]; then
  data=$(mktemp -d)
  python3 -c "import sys; from pathlib import Path; sys.path.insert(0, 'bench'); from throughput import mnist_sized_idx; mnist_sized_idx(Path('$data'))" \
    > "$out/data.log" 2>&1
  export MIXVAE_DATA_DIR="$data"
fi
run() {  # NAME SECONDS ARGS…: JSON lines to OUT/NAME.jsonl (and the console), stderr to OUT/NAME.err
  local name=$1 seconds=$2; shift 2
  timeout "$seconds" python3 "$@" 2> "$out/$name.err" | tee "$out/$name.jsonl"
  echo "# $name: exit ${PIPESTATUS[0]}; stderr tail:"; tail -n 3 "$out/$name.err"
}
run gpu_epoch "${GPU_EPOCH_SECONDS:-300}" bench/gpu_epoch.py --gpu --epochs 2 --batch 128 --top-m 2 0 \
  --decode-dtype float32 bfloat16
run dp_quick "${DP_SECONDS:-90}" bench/data_parallel.py --gpu
echo "done: $(ls "$out")"
