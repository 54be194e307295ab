#!/usr/bin/env bash
# Static store against source store on a GPU machine: the same U-Net trained from a static store and
# from a source store mixed on the fly, both built from every speech and noise folder of the shared data
# with the same split by speaker and by noise file, splits_all_folders.json (docs/results.md reports what
# it produced).
# Run from the repository root after the wheels and data staged by ../shared/device/stage.sh are
# unpacked (`~/site`; `~/bundle/data/{speech,noise}` holding the shared data's speech/ and noise/).
# Stages, in the order given:
#   build-sources   the source store at 8 kHz (all voices but the VoxCeleb interferers; all noises)
#   build-sources-16k  the same at 16 kHz, less the 8 kHz-only dns-enrollment-8k voices ($HOME/sources16)
#   build-static    the static store of the same folders: N windows (default 45,000), SNR -8..18 dB
#   train-static    the shipped U-Net's recipe (gpu preset, mask target, magnitude-weighted loss) on it
#   train-sources   the same recipe and steps per epoch, mixing on the fly at the same SNRs
#   train-stream-small, train-stream-large
#                   the streaming family (stream-crn) from STREAM_SRC (default: the 8 kHz source store;
#                   $HOME/sources16 for 16 kHz), STREAM_EPOCHS x STREAM_STEPS, 2 s windows, at most
#                   STREAM_MINUTES (default: no limit)
#   bench-mixer     one-window waveform examples/s of the mixer on every core of the host
# EPOCHS (30), N, BACKEND (jax) and TRAIN_ARGS (appended to both trainings) change the run.
# Outputs to $OUT: each model in 15 MiB pieces; the splits, summaries and histories in one results.tar
# (at most 8 files come back from one call).
set -euo pipefail
BACKEND=${BACKEND:-jax}
export PYTHONPATH=$HOME/site:$PWD KERAS_BACKEND=$BACKEND PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
DATA=$HOME/bundle/data
SRC=${SRC:-$HOME/sources}
DS=${DS:-$HOME/static}
MODELS=$HOME/models
OUT=${OUT:-/tmp/out}
EPOCHS=${EPOCHS:-30}
N=${N:-45000}
BATCH=256
PY=${PY:-python3}
mkdir -p "$OUT" "$MODELS"
VOICES=(--voice-dir "$DATA/speech/librispeech" --voice-dir "$DATA/speech/dns-enrollment-8k"
        --voice-dir "$DATA/speech/commonvoice-hsb" --voice-dir "$DATA/speech/grid" --voice-dir "$DATA/speech/lombard-grid")
NOISES=()
for d in "$DATA"/noise/*/; do NOISES+=(--noise-dir "${d%/}"); done
# One split for every build: the shipped models' held-out test set (LibriSpeech test-other, the
# held-out noise files) kept out of training; scripts/shared_data_split.py writes it.
SPLIT=(--splits scripts/shared_split/splits_all_folders.json)
quiet() { grep --line-buffered -v "sdk_worker\|data_plane\|harness\|statecache\|semi_persistent\|Pipeline_options\|Logging handler\|wrote .*tfrecord"; }
train() {  # train NAME DATASET [flags...]
  local name=$1 dataset=$2; shift 2
  "$PY" -m speech_enhance train --backend "$BACKEND" --dataset "$dataset" --model-dir "$MODELS/$name" \
    --work-dir "$HOME/work-$name" --preset gpu --base-filters 24 --target mask --loss-weighting magnitude \
    --epochs "$EPOCHS" --summary-json "$OUT/summary-$name.json" "$@" ${TRAIN_ARGS:-} 2>&1 | grep -v "^\s*$" | tail -25
  cp "$HOME/work-$name/history.csv" "$OUT/history-$name.csv"
  tar -C "$MODELS" -cf - "$name" | split -b 15M -d -a 2 - "$OUT/model-$name.tar."
}
run_stage() {
  case $1 in
    build-sources|build-sources-16k)
      if [ "$1" = build-sources ]; then rate=8000 store=$SRC voices=("${VOICES[@]}")
      else rate=16000 store=$HOME/sources16 voices=("${VOICES[@]:0:2}" "${VOICES[@]:4}"); fi
      /usr/bin/time -f "%e s, %M KB" "$PY" -m speech_enhance dataset --kind sources --sample-rate "$rate" \
        "${voices[@]}" "${NOISES[@]}" "${SPLIT[@]}" --output "$store" --workers "$(nproc)" --overwrite 2>&1 | quiet | tail -8
      "$PY" -m speech_enhance inspect "$store" | tail -20
      cp "$store/splits.json" "$OUT/splits-${store##*/}.json"
      ;;
    build-static)
      /usr/bin/time -f "%e s, %M KB" "$PY" -m speech_enhance dataset "${VOICES[@]}" "${NOISES[@]}" "${SPLIT[@]}" \
        --snr-db -8:18 --num-examples "$N" --output "$DS" --workers "$(nproc)" --overwrite 2>&1 | quiet | tail -8
      cp "$DS/splits.json" "$OUT/splits-static.json"
      du -sh "$SRC" "$DS" 2>/dev/null || true
      ;;
    train-static)
      train static "$DS"
      ;;
    train-sources)
      # As many steps per epoch as the static store's training split holds batches.
      steps=$("$PY" -c "from tfrecord_schema.dataset import Dataset; print(Dataset.open('$DS').num_examples('train') // $BATCH)")
      train sources "$SRC" --steps-per-epoch "$steps" --snr-db -8:18
      ;;
    train-stream-small|train-stream-large)
      # The streaming family from the source store, its own recipe: float32, hybrid loss, 2 s windows.
      size=${1#train-stream-}
      stream_src=${STREAM_SRC:-$SRC}
      rate=$("$PY" -c "from tfrecord_schema.sources import SourceStore; print(SourceStore.open('$stream_src').info.sample_rate)")
      "$PY" -m speech_enhance train --backend "$BACKEND" --dataset "$stream_src" --model-dir "$MODELS/stream-$size" \
        --work-dir "$HOME/work-stream-$size" --architecture stream-crn --stream-size "$size" --batch-size "${STREAM_BATCH:-128}" \
        --learning-rate 1e-3 --epochs "${STREAM_EPOCHS:-10}" --steps-per-epoch "${STREAM_STEPS:-300}" \
        --window-samples $((rate * 2016 / 1000)) --snr-db -8:18 --jit-compile ${STREAM_MINUTES:+--time-limit-minutes $STREAM_MINUTES} \
        --summary-json "$OUT/summary-stream-$size.json" 2>&1 | grep -v "^\s*$" | tail -25
      cp "$HOME/work-stream-$size/history.csv" "$OUT/history-stream-$size.csv"
      tar -C "$MODELS" -cf - "stream-$size" | split -b 15M -d -a 2 - "$OUT/model-stream-$size.tar."
      ;;
    bench-mixer)
      # A file, not a here-document: the spawned processes re-import the main module.
      timeout 120 "$PY" benchmarks/mixer_cores.py "$SRC" --json "$OUT/mixer-cores.json"
      ;;
    *) echo "unknown stage $1"; return 2 ;;
  esac
}
for stage in "$@"; do
  echo "=== $stage $(date +%T)"
  # A failed stage is reported and the next one runs.
  set +e; (set -e; run_stage "$stage"); rc=$?; set -e
  [ "$rc" = 0 ] || echo "=== $stage failed ($rc)"
  # The small outputs travel in one file.
  (cd "$OUT" && ls *.json *.csv >/dev/null 2>&1 && tar -rf results.tar *.json *.csv && rm -f *.json *.csv) || true
done
