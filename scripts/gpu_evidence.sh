#!/usr/bin/env bash
# The GPU figures the speed issue asks for, in one prepared device call, written under OUT.
#
#   bash scripts/gpu_evidence.sh OUT quick     [--dry-run] [PART ...]   <= 8 min on one H200
#   bash scripts/gpu_evidence.sh OUT notebooks [--dry-run]              <= 5 min: 03_finetune as a script
#
# --dry-run runs the same parts with tiny models on the CPU in seconds (the tests use it): it proves
# the plumbing, the parsing and the summary table, not any figure. PART names a subset of quick's parts.
# Nothing is downloaded: the models are random-init at the real VLE sizes and the data is synthetic.
# Without network the kit installs over the image's torch / transformers (pip --no-deps -e).
#
# Every part runs under its own time cap and the whole mode under a deadline, and a part that fails
# (OOM, a missing optional package, a crash) is recorded and the next one runs; the summary table
# (OUT/summary.md, OUT/summary.json) is written last whatever happened. Each part's output is in
# OUT/<part>.log, its report in OUT/<part>.json; OUT/parts.tsv says how each part ended and how long it took.
#
# Budget of quick on paper (H200, nothing measured yet: the estimates assume the issue's targets,
# ~150 questions/s for VLE-base training at batch 32-64 and ~40 for VLE-large, ~15 s per Python
# start with model build and meta-device FLOP counts, CUDA kernels warm after 4 steps):
#   part              what                                                        estimate   cap
#   install, env      pip --no-deps -e (kit + plugins), nvidia-smi, versions        20 s    60 s
#   bench-base        VLE-base Q->A train + infer, batch 16 32 64, 12 timed steps   70 s   120 s
#   bench-base-max    train at batch 96 128 192 (OOM reported): largest that fits   55 s    90 s
#   bench-base-pad80  train at batch 16, text padded to 80 (the official setting)   25 s    45 s
#   bench-base-ckpt   train at batch 128 in one step, gradient checkpointing        35 s    60 s
#   bench-base-sdpa   train at batch 16 32, DeBERTa attention through SDPA            30 s    45 s
#   bench-large       VLE-large train, batch 16 32                                  50 s    80 s
#   train-loop        vlekit train, 384 px JPEGs on disk, 8 workers, 150 steps @32  95 s   130 s
#   profile           5 profiled steps at batch 32: top ops by GPU time, bf16 casts 35 s    60 s
#   summary           the table                                                      2 s
#   total                                                                          417 s   465 s deadline
# Budget of notebooks on paper: install/env 20 s; 03_finetune (the demo's tiny model on the GPU, bf16,
# 8000 + 800 synthetic questions written in ~60 s, Q->A then QA->R for 6 epochs at batch 64, ~750 steps
# each, evaluation and plots) ~150 s, capped at 280 s; deadline 290 s.
# The deadline (QUICK_DEADLINE_S, 465 s after the start) shortens a part's cap to the time left and
# skips a part when under 20 s remain, so quick ends within 8 minutes even when estimates are wrong.
set -uo pipefail

usage="usage: bash scripts/gpu_evidence.sh OUT quick|notebooks [--dry-run] [PART ...]"
OUT=${1:?$usage}
MODE=${2:?$usage}
shift 2
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
QUICK_PARTS=(bench-base bench-base-max bench-base-pad80 bench-base-ckpt bench-base-sdpa bench-large train-loop profile)
SELECTED=("$@")
PYTHON=${PYTHON:-python}
case $MODE in
  quick) DEADLINE_S=${QUICK_DEADLINE_S:-465} ;;
  notebooks) DEADLINE_S=${NOTEBOOKS_DEADLINE_S:-290} ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
for part in "${SELECTED[@]}"; do
  [[ " ${QUICK_PARTS[*]} " == *" $part "* ]] || { echo "unknown part '$part'; quick's parts: ${QUICK_PARTS[*]}" >&2; exit 2; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
: > "$OUT/parts.tsv"

# Settings of the real run and of the dry run: same parts, same flags, other sizes.
if (( DRY_RUN )); then
  BASE=(--preset tiny --device cpu --dtype fp32 --steps 2 --warmup 0 --distinct-batches 1)
  LARGE=("${BASE[@]}")
  SIZES=(2 4) MAX_SIZES=(8) LARGE_SIZES=(2) PAD_SIZE=2 CKPT_SIZE=4 PROFILE_SIZE=2
  TRAIN_CONFIG=configs/demo-tiny.yaml TRAIN_BATCH=4
  TRAIN_SETTINGS=(train.cpu=true train.mixed_precision=fp32 train.max_steps=4 train.batch_size=$TRAIN_BATCH
                  train.log_every_steps=2 data.num_workers=1 data.jpeg_draft=true data.pixel_dtype=uint8)
  NUM_TRAIN=32 NUM_VAL=8 FRAME_HEIGHT=64
else
  BASE=(--preset vle-base --device cuda --dtype bf16 --steps 12 --warmup 4 --peak-tflops 790)
  LARGE=(--preset vle-large --device cuda --dtype bf16 --steps 8 --warmup 4 --peak-tflops 790)
  SIZES=(16 32 64) MAX_SIZES=(96 128 192) LARGE_SIZES=(16 32) PAD_SIZE=16 CKPT_SIZE=128 PROFILE_SIZE=32
  TRAIN_CONFIG=configs/vle-base-synthetic.yaml TRAIN_BATCH=32
  TRAIN_SETTINGS=(train.max_steps=150 train.batch_size=$TRAIN_BATCH train.log_every_steps=25 data.num_workers=8)
  NUM_TRAIN=4800 NUM_VAL=64 FRAME_HEIGHT=384
fi

left() { echo $(( DEADLINE_S - SECONDS )); }

# part NAME CAP_S COMMAND...: run under min(cap, time left - 10 s), output to OUT/NAME.log, status to parts.tsv.
part() {
  local name=$1 cap=$2; shift 2
  local remaining; remaining=$(( $(left) - 10 ))
  if (( remaining < 20 )); then
    printf '%s\tskipped\t0\tdeadline (%s s left)\n' "$name" "$(left)" >> "$OUT/parts.tsv"
    echo "== $name: skipped, deadline" >&2
    return
  fi
  (( cap > remaining )) && cap=$remaining
  echo "== $name (cap ${cap} s)" >&2
  local start=$SECONDS rc=0
  timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  local status=ok
  if (( rc == 124 || rc == 137 )); then status=timeout; elif (( rc != 0 )); then status=failed; fi
  printf '%s\t%s\t%s\trc %s\n' "$name" "$status" "$(( SECONDS - start ))" "$rc" >> "$OUT/parts.tsv"
  echo "   $status after $(( SECONDS - start )) s" >&2
}

wanted() { [[ ${#SELECTED[@]} -eq 0 || " ${SELECTED[*]} " == *" $1 "* ]]; }

bench() {  # bench NAME CAP ARGS...: vlekit bench's table to NAME.log, its report (written per row) to NAME.json
  local name=$1 cap=$2; shift 2
  wanted "$name" && part "$name" "$cap" "$PYTHON" -m vlekit.cli bench "$@" --json "$OUT/$name.json"
}

ENVIRONMENT_PY='
import importlib, json, platform, sys
versions = {}
for name in ("torch", "transformers", "accelerate", "timm", "einops", "triton", "disentangled_flash", "vlekit"):
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "installed")
    except Exception as error:  # an optional package may be missing or broken; the run goes on
        versions[name] = f"missing ({type(error).__name__})"
import torch
env = {"python": platform.python_version(), "versions": versions, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
               memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
json.dump(env, open(sys.argv[1], "w"), indent=2)
'

# The synthetic VCR data of the training loop, its frames scaled to FRAME_HEIGHT px high (the generator's
# are 100-120 px; VCR's ~800, and 384 is what the model sees), so JPEG decoding costs what it would.
FRAMES_PY='
import sys
import data_prep.synthetic as synthetic
out, num_train, num_val, height = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
synthetic.FRAME_SIZES = tuple((name, round(w * height / h), height) for name, w, h in synthetic.FRAME_SIZES)
synthetic.generate_synthetic_vcr(out, num_train=num_train, num_val=num_val, num_test=0, questions_per_image=8)
print(f"wrote {num_train} + {num_val} questions, frames {height} px high, under {out}")
'

summary() {
  "$PYTHON" scripts/gpu_evidence_summary.py "$OUT" --mode "$MODE" --train-batch "$TRAIN_BATCH" \
    $( (( DRY_RUN )) && echo --dry-run ) \
    || echo "summary failed: see the logs under $OUT" >&2
}

if ! "$PYTHON" -c "import vlekit, vlekit_fusions, vlekit_timm" 2>/dev/null; then
  part install 60 "$PYTHON" -m pip install --no-deps --no-build-isolation -e . -e plugins/vlekit-fusions -e plugins/vlekit-timm
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/nvidia-smi.txt" 2>&1 || true
part environment 30 "$PYTHON" -c "$ENVIRONMENT_PY" "$OUT/environment.json"
if [[ $MODE == quick ]]; then
  bench bench-base 120 "${BASE[@]}" --mode both --batch-size "${SIZES[@]}"
  bench bench-base-max 90 "${BASE[@]}" --mode train --batch-size "${MAX_SIZES[@]}"
  bench bench-base-pad80 45 "${BASE[@]}" --mode train --batch-size "$PAD_SIZE" --pad-to 80
  bench bench-base-ckpt 60 "${BASE[@]}" --mode train --batch-size "$CKPT_SIZE" --gradient-checkpointing --steps 5
  bench bench-base-sdpa 45 "${BASE[@]}" --mode train --batch-size "$PAD_SIZE" "${SIZES[1]}" --text-attention sdpa
  bench bench-large 80 "${LARGE[@]}" --mode train --batch-size "${LARGE_SIZES[@]}"
  if wanted train-loop; then
    data=$OUT/train-loop-data
    rm -rf "$OUT/train-loop" "$data"
    part train-loop-data 40 "$PYTHON" -c "$FRAMES_PY" "$data" "$NUM_TRAIN" "$NUM_VAL" "$FRAME_HEIGHT"
    part train-loop 130 "$PYTHON" -m vlekit.cli train --config "$TRAIN_CONFIG" --no-progress train.out="$OUT/train-loop" \
      data.train_annotations="$data/train.jsonl" data.val_annotations="$data/val.jsonl" data.images="$data/vcr1images" \
      train.epochs=1 train.save_every_steps=0 "${TRAIN_SETTINGS[@]}"
  fi
  bench profile 60 "${BASE[@]}" --mode train --batch-size "$PROFILE_SIZE" --steps 2 --profile "$OUT/profile"
else
  if (( DRY_RUN )); then
    NOTEBOOK_SETTINGS=(SMOKE=True)
  else  # the demo's model on the GPU, bf16, at sizes a GPU trains in a few minutes: its table and curves
    NOTEBOOK_SETTINGS=(NUM_TRAIN=8000 NUM_VAL=800 EPOCHS=6 BATCH_SIZE=64 NUM_WORKERS=8)
  fi
  part 03_finetune 280 "$PYTHON" scripts/run_notebook.py notebooks/03_finetune.ipynb --out "$OUT/03_finetune" \
    "${NOTEBOOK_SETTINGS[@]}"
fi
summary
