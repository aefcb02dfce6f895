#!/bin/bash
# Every algorithm on one GPU machine in two commands:
#   rayseq/bench/device_compare.sh setup     # install (device_setup.sh), GPU tests, the MLE run
#   rayseq/bench/device_compare.sh compare   # every other algorithm from that MLE actor, in parallel
# Needs .whl/ (see device_setup.sh) or SKIP_INSTALL=1 where rayseq is installed.
# Work happens in /tmp/rayseq-cmp; $OUT gets compare.md/png of the combined table and runs.tgz with
# every comparison's compare.* and each run's results.json / metrics.jsonl / run.json (checkpoints
# and actor files stay behind: too big). The groups' logs go to $OUT too.
set -u
OUT=${OUT:-device_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled PYTHONPATH=/tmp/site:$PWD
W=${W:-/tmp/rayseq-cmp}
EPOCHS=${EPOCHS:-5}
ALGOS=${ALGOS:-mle,raml,vaml,ac,erac,scst,mixer,ppo,appo,sac}
GROUPS_=${GROUPS_:-"raml vaml ac,erac scst,mixer ppo,appo sac"}
TASK=${TASK:-multi30k}
# The cpu preset's stage sizes, with the MLE family at $EPOCHS epochs; the swap-ins (RLlib's own
# env runners, O(T^2) decoding on the CPU) get 4 workers each and fewer iterations to keep it short.
COMMON=(--task "$TASK" --preset cpu --set "epochs=$EPOCHS" --set "vaml:algo.qnet_epochs=2"
        --set "ppo:algo.iterations=10" --set "appo:algo.iterations=10" --set "sac:algo.iterations=40"
        --set "ppo:num_rollout_workers=4" --set "appo:num_rollout_workers=4" --set "sac:num_rollout_workers=4")
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/timeline.txt"; }

collect() {  # one archive of the small outputs (runs.tgz), + the table
  (cd "$W" && tar czf "$OUT/runs.tgz" */compare.* */*-seed*/results.json */*-seed*/metrics.jsonl \
     */*-seed*/run.json */*-seed*/compare_error.txt 2>/dev/null)
  [ -f "$W/all/compare.md" ] && cp "$W/all/compare.md" "$W/all/compare.png" "$OUT/"
}

if [ "${1:-}" = setup ]; then
  [ -z "${SKIP_INSTALL:-}" ] && source rayseq/bench/device_setup.sh
  nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
  python3 -c "import ray, torch; print('ray', ray.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
  say setup done
  [ -z "${SKIP_INSTALL:-}" ] && python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -8 | tee "$OUT/gpu_tests.txt"
  say gpu tests done
  mkdir -p "$W/base"
  python3 -m rayseq.cli compare "${COMMON[@]}" --algos mle --out "$W/base" > "$OUT/base.log" 2>&1
  say mle done
  collect
elif [ "${1:-}" = compare ]; then
  i=0; pids=()
  for g in $GROUPS_; do
    i=$((i + 1)); d="$W/g$i"; mkdir -p "$d"; cp -r "$W/base/mle-seed1234" "$d/"
    ( python3 -m rayseq.cli compare "${COMMON[@]}" --algos "$g" --out "$d" > "$OUT/g$i-${g//,/_}.log" 2>&1; say "group $g done" ) &
    pids+=($!)
  done
  ( sleep "${BUDGET_S:-420}"; say "budget reached: stopping the groups"; pkill -f "rayseq.cli compare" ) &
  killer=$!
  wait "${pids[@]}"
  kill $killer 2>/dev/null
  mkdir -p "$W/all"
  for r in "$W"/base/*-seed*/ "$W"/g*/*-seed*/; do [ -f "$r/results.json" ] && cp -r "$r" "$W/all/" 2>/dev/null; done
  python3 -m rayseq.cli compare "${COMMON[@]}" --algos "$ALGOS" --out "$W/all" --report-only > "$OUT/all.log" 2>&1
  say combined
  collect
fi
say end
