#!/bin/bash
# GPU checks on a GPU machine (one command): install the offline wheels (device_setup.sh), then run
# the GPU tests of the learner and the benchmarks with the learner on cuda. Results go to $OUT (or
# ./device_out). Needs .whl/ (see device_setup.sh) or SKIP_INSTALL=1 where rayseq is installed.
#   rayseq/bench/device_checks.sh            # all
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
t0=$(date +%s)
source rayseq/bench/device_setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import ray, torch, gymnasium; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
echo "setup $(( $(date +%s) - t0 )) s"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_actor_critic.py -k "packed or gpu or cuda" 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"
echo "tests $(( $(date +%s) - t0 )) s"
python3 -m rayseq.cli bench train --algo erac --batches 20 --json 2>"$OUT/bench_train_erac.err" | tail -1 | tee "$OUT/bench_train_erac.json"
echo "bench train $(( $(date +%s) - t0 )) s"
python3 -m rayseq.cli bench rollout --seconds 10 --json 2>"$OUT/bench_rollout.err" | tail -1 | tee "$OUT/bench_rollout.json"
echo "bench rollout $(( $(date +%s) - t0 )) s"
