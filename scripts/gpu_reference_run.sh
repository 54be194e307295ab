#!/usr/bin/env bash
# The reference training run on a GPU machine (docs/results.md reports what it produced).
# Run from the repository root after the wheels and data staged by ../shared/device/stage.sh are
# unpacked (`~/site`, `~/bundle/data/{train-clean-100,noise}`). Stages, in order given:
#   build           the Beam job on all cores: 45,000 windows (40,500 train / 4,500 valid), held-out
#                   noise files and test speakers excluded (scripts/shared_split/)
#   train-noise     train the U-Net on the `noise` target (JAX backend, bf16), EPOCHS epochs
#   train-mask      the same on the `mask` target
#   train-mask-weighted, train-noise-weighted
#                   the same with the loss weighted by the noisy magnitude (--loss-weighting magnitude)
#   family-ARCH     train the model family ARCH (blstm-sce, blstm-dc, mel-autoencoder) with the gpu
#                   preset, EPOCHS epochs (FAMILY_EPOCHS overrides), and cut the model directory into
#                   15 MiB pieces ~/fetch/ARCH.tar.NN (a device call returns at most 64 MiB)
#   fetch-ARCH-I-J  copy pieces I..J of ARCH's model to $OUT
#   bench           training throughput (tf.data vs in-memory) and GPU prediction speed
#   bench-train, bench-predict   one of the two
# Outputs (for the caller to keep) go to $OUT.
set -euo pipefail
export PYTHONPATH=$HOME/site:$PWD KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
DATA=$HOME/bundle/data
DS=${DS:-$HOME/ds}
# The voice folders and splits of the build; TWO_CORPORA=1 adds dns-enrollment-8k (staged as
# ~/bundle/data/dns-enrollment-8k) with scripts/shared_split/splits_two_corpora.json.
VOICES=(--voice-dir "$DATA/train-clean-100")
SPLITS=scripts/shared_split/splits.json
if [ "${TWO_CORPORA:-0}" = 1 ]; then
  VOICES+=(--voice-dir "$DATA/dns-enrollment-8k")
  SPLITS=scripts/shared_split/splits_two_corpora.json
fi
MODELS=$HOME/models
OUT=${OUT:-/tmp/out}
EPOCHS=${EPOCHS:-40}
N=${N:-45000}
mkdir -p "$OUT" "$MODELS"
quiet() { grep --line-buffered -v "sdk_worker\|data_plane\|harness\|statecache\|semi_persistent\|Pipeline_options\|Logging handler"; }
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  case $stage in
    build)
      /usr/bin/time -v python3 -m speech_enhance dataset "${VOICES[@]}" --noise-dir "$DATA/noise" \
        --noise-classes scripts/shared_split/classes.tsv --splits "$SPLITS" \
        --split-fractions 0.9,0.1,0 --snr-db -8:18 --output "$DS" --num-examples "$N" \
        --workers "$(nproc)" --overwrite ${BUILD_ARGS:-} 2>&1 | quiet | grep -v "wrote .*tfrecord" | tail -40
      python3 -m speech_enhance inspect "$DS" --plot "$OUT/dataset_inspect.png" --json "$OUT/dataset_summary.json" | tail -30
      ;;
    train-*)
      name=${stage#train-}
      target=${name%%-*}
      out_name=${MODEL_NAME:-$name}
      weighting=none
      case $name in *-weighted) weighting=magnitude ;; esac
      python3 -m speech_enhance train --backend jax --dataset "$DS" --model-dir "$MODELS/$out_name" \
        --work-dir "$HOME/work-$out_name" --preset gpu --target "$target" --loss-weighting "$weighting" \
        --epochs "$EPOCHS" --summary-json "$MODELS/$out_name/summary.json" ${TRAIN_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -40
      cp "$HOME/work-$out_name"/*.csv "$HOME/work-$out_name"/*.png "$MODELS/$out_name/" 2>/dev/null || true
      # a device call returns files of at most 16 MiB: larger models come back in pieces
      tar -C "$MODELS" -cf - "$out_name" | split -b 15M -d -a 2 - "$OUT/model-$out_name.tar."
      ;;
    family-*)
      arch=${stage#family-}
      python3 -m speech_enhance train --backend jax --dataset "$DS" --model-dir "$MODELS/$arch" \
        --work-dir "$HOME/work-$arch" --preset gpu --architecture "$arch" --epochs "${FAMILY_EPOCHS:-$EPOCHS}" \
        --summary-json "$MODELS/$arch/summary.json" ${TRAIN_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -30
      cp "$HOME/work-$arch"/*.csv "$HOME/work-$arch"/*.png "$MODELS/$arch/" 2>/dev/null || true
      cp "$MODELS/$arch/summary.json" "$OUT/summary-$arch.json"
      mkdir -p "$HOME/fetch"
      tar -C "$MODELS" -cf - "$arch" | split -b 15M -d -a 2 - "$HOME/fetch/$arch.tar."
      ls -l "$HOME/fetch"
      ;;
    fetch-*)
      spec=${stage#fetch-}; arch=${spec%-*-*}; range=${spec#"$arch"-}
      for i in $(seq -w "${range%-*}" "${range#*-}"); do
        f="$HOME/fetch/$arch.tar.$(printf %02d "$((10#$i))")"
        [ -f "$f" ] && cp "$f" "$OUT/"
      done
      ls -l "$OUT"
      ;;
    bench|bench-train)
      python3 benchmarks/train_throughput.py --dataset "$DS" --backend jax --batch-size 256 --precision bfloat16 \
        --steps 300 --json "$OUT/train_throughput_gpu.json" 2>&1 | tail -25
      [ "$stage" = bench-train ] && continue
      ;;&
    bench|bench-predict)
      python3 benchmarks/predict_speed.py --model "$MODELS/${BENCH_MODEL:-mask}" --batch-sizes 64 256 1024 \
        --total-seconds "${BENCH_SECONDS:-1800}" \
        --json "$OUT/predict_speed_gpu.json" 2>&1 | tail -25
      ;;
    *) echo "unknown stage $stage" >&2; exit 2 ;;
  esac
done
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>/dev/null || true
