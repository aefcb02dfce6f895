#!/bin/bash
# The paper-size actor-critic comparison on Multi30k for a GPU machine, as one script:
# MLE (paper preset: ≤ 30 epochs) once, then AC, ERAC, ERAC w/o future entropy and ERAC with the
# official L2-normalised entropy term from that actor (critic pretraining 20 epochs, joint ≤ 30,
# β = 0.001: the paper's settings), in parallel on the one GPU, then a comparison figure.
#   RUNS=/path/to/runs WORKERS=6 rayseq/bench/paper_run_gpu.sh
# Needs rayseq installed (on a machine without network access: source rayseq/bench/device_setup.sh
# first). Every run resumes where it stopped if the script is started again.
set -euo pipefail
RUNS=${RUNS:-runs/paper}; WORKERS=${WORKERS:-6}; TASK=${TASK:-multi30k}
mkdir -p "$RUNS"
train() { python3 -m rayseq.cli train "$@"; }
resume_or_start() {  # resume_or_start OUT ARGS...: --resume when OUT already holds the run
  local out=$1; shift
  if [ -f "$out/run.json" ]; then train --resume "$out"; else train --out "$out" "$@"; fi
}
resume_or_start "$RUNS/mle" --algo mle --task "$TASK" --preset paper
for spec in "ac:ac:" "erac:erac:" "erac-nofutent:erac-nofutent:" "erac:erac-l2:algo.normalize_logpi_l2=true"; do
  IFS=: read -r algo name extra <<< "$spec"
  resume_or_start "$RUNS/$name" --algo "$algo" --task "$TASK" --preset paper --num-rollout-workers "$WORKERS" \
      algo.actor_init="$RUNS/mle" $extra > "$RUNS/$name.log" 2>&1 &
done
wait
python3 -m rayseq.cli compare MLE="$RUNS/mle" AC="$RUNS/ac" ERAC="$RUNS/erac" "ERAC-nofutent=$RUNS/erac-nofutent" \
    "ERAC-L2=$RUNS/erac-l2" --out "$RUNS/compare.png" --title "$TASK, paper settings"
for name in mle ac erac erac-nofutent erac-l2; do echo "$name: $(python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r['test']['bleu'])" "$RUNS/$name/results.json")"; done
