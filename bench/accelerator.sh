#!/bin/bash
# The encoder's kernel forms and model FLOPs utilisation on the device jax finds, for bench/RESULTS.md.
# From the repository root:
#   OUT=/tmp/bench_out bash bench/accelerator.sh            # GPU/TPU: BERT-base shape, about 6-8 minutes
#   OUT=/tmp/bench_out SMALL=1 bash bench/accelerator.sh    # any machine: tiny sizes, to check the script
# Needs only the repository and its requirements (jax for the device: README "Run on GPUs" / "Run on a
# TPU"): random weights, no checkpoint, no data set, no network, no torch. Steps:
#   bert_base_{bfloat16,float32}: BERT-base (12 x 768, 12 heads, batch 32, seq 128 and 512), forward and
#     train step, each kernel form (EncoderConfig.kernels: cpu_tuned, portable) alternating in one run; the
#     model FLOPs utilisation of each, analytic FLOPs over the median time against the device's peak
#     (bench/machine.py's table: H100/H200, A100, L4, TPU v2-v6; 'unknown' elsewhere, e.g. CPUs).
#   archs: BERT, MPNet and DeBERTa-v3 at MiniLM's shape (6 x 384), both forms, seq 128, float32.
#   deberta_scores: DeBERTa's relative term alone in its three formulations.
# Each step writes $OUT/<step>.txt (its output) and $OUT/<step>.json (devices: jax's; the encoder steps:
# machine, device, peak, medians, MFU and ratios); a failed step is reported and the rest still run.
# STEP_TIMEOUT (seconds, default 200; SMALL: 600) bounds each step, so the script ends within about 10 minutes.
# FULL=1 adds the older, longer benchmarks (papa_speed, adaptive_speed; the latter needs the packaged MiniLM
# and the movie-review sentences in $XDG_CACHE_HOME/sweet_papa_jax).
set -u
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
export PYTHONPATH=.
PY=${PYTHON:-python}
if [ -n "${SMALL:-}" ]; then  # tiny sizes: shows that every step runs, in a minute or two on a CPU
  BASE="--layers 2 --hidden 64 --heads 4 --batch 4 --seq 32 --reps 3 --warmup 1"
  ARCHS="--layers 2 --hidden 64 --heads 4 --batch 4 --seq 32 --reps 3 --warmup 1"
  SCORES="3"
  : "${STEP_TIMEOUT:=600}"  # compiles dominate on a CPU
else
  BASE="--layers 12 --hidden 768 --heads 12 --batch 32 --seq 128,512 --reps 20 --warmup 2"
  ARCHS="--seq 128 --reps 10 --warmup 2"
  SCORES="10"
fi

step() {
  local name=$1; shift
  echo "== $name: $*"
  timeout "${STEP_TIMEOUT:-200}" $PY "$@" > "$OUT/$name.txt" 2>&1
  echo "   exit $?; last lines:"; tail -n 4 "$OUT/$name.txt" | sed 's/^/   /'
}

$PY - > "$OUT/devices.json" 2>&1 <<'EOF'
import json, jax
print(json.dumps({'jax': jax.__version__, 'backend': jax.default_backend(),
                  'devices': [d.device_kind for d in jax.devices()]}))
EOF
command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
for dtype in bfloat16 float32; do
  step "bert_base_$dtype" bench/encoder_speed.py --only jax --kernels cpu_tuned,portable --dtype "$dtype" \
    $BASE --json "$OUT/bert_base_$dtype.json"
done
step archs bench/encoder_speed.py --only jax --kernels cpu_tuned,portable --arch bert,mpnet,deberta-v3 $ARCHS \
  --json "$OUT/archs.json"
step deberta_scores bench/deberta_scores.py $SCORES --json "$OUT/deberta_scores.json"
if [ -n "${FULL:-}" ]; then
  step papa_speed bench/papa_speed.py --reps 50 --batch 64
  for dtype in bfloat16 float32; do
    step "adaptive_$dtype" bench/adaptive_speed.py --dtype "$dtype" --batch-sizes 64,256 --examples 2048 \
      --repeats 5 --out "$OUT/adaptive_$dtype.json"
  done
fi
