#!/usr/bin/env bash
# The GPU figures the issues ask for, on one GPU, written under OUT (tables, JSON, PNG, logs).
#
#   bash scripts/gpu_evidence.sh OUT [PART ...]     PART: bench train ablation notebooks (default: all)
#
# Each part is meant to fit in ~10 minutes on an H100 (not yet tried: no GPU so far), so a machine
# that limits one command's time can run them one by one. Nothing is downloaded: the models are random-init at the real VLE sizes and the data
# is synthetic. Without network, the kit installs over the torch / transformers already there.
#   bench      vlekit bench: VLE-base train+infer at batch 16/32/64, batch 128 with gradient
#              checkpointing, --compile, text padded to 80 (the official setting), a profiler trace,
#              VLE-large; -> bench-*.json / .txt, profile/
#   train      the real training loop at VLE-base size on synthetic VCR images on disk (bf16, 400
#              steps, batch 32): questions/s, data-time fraction and peak memory per log step
#              -> vle-base-synthetic/metrics.jsonl (compare with bench-base.json at batch 32)
#   ablation   the ablation grid of notebook 04 (10 variants x 3 seeds) -> ablation/summary.md, accuracy.png
#   notebooks  notebooks 03 (full settings) and 04 (reading the grid above) as scripts -> 03_finetune/, 04_ablations/
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu_evidence.sh OUT [bench|train|ablation|notebooks ...]}
shift
PARTS=${*:-bench train ablation notebooks}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."

python -c "import vlekit_fusions, vlekit" 2>/dev/null || \
  python -m pip install --quiet --no-deps --no-build-isolation -e . -e plugins/vlekit-fusions -e plugins/vlekit-timm
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >> "$OUT/gpu.txt"

bench() {  # bench NAME ARGS...: table to NAME.txt, report to NAME.json
  local name=$1; shift
  python -m vlekit.cli bench "$@" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt"
}

for part in $PARTS; do
  start=$SECONDS
  case $part in
    bench)
      bench bench-base --preset vle-base --mode both --batch-size 16 32 64
      bench bench-base-128-checkpointing --preset vle-base --mode train --batch-size 128 --gradient-checkpointing --steps 10
      bench bench-base-compile --preset vle-base --mode train --batch-size 32 --compile
      bench bench-base-pad80 --preset vle-base --mode train --batch-size 16 32 --pad-to 80
      bench bench-base-profile --preset vle-base --mode train --batch-size 32 --steps 5 --profile "$OUT/profile"
      bench bench-large --preset vle-large --mode both --batch-size 16 32
      ;;
    train)
      python -m vlekit.cli synthetic runs/synthetic --num-train 16000 --num-val 500 --num-test 0
      python -m vlekit.cli train --config configs/vle-base-synthetic.yaml train.out="$OUT/vle-base-synthetic" 2>&1 \
        | tail -n 40 | tee "$OUT/vle-base-synthetic.log"
      ;;
    ablation)
      python -m vlekit.ablation --out "$OUT/ablation" 2>&1 | tee "$OUT/ablation.log"
      ;;
    notebooks)
      python scripts/run_notebook.py notebooks/03_finetune.ipynb --out "$OUT/03_finetune" NUM_WORKERS=8 \
        | tee "$OUT/03_finetune.log"
      python scripts/run_notebook.py notebooks/04_ablations.ipynb --out "$OUT/ablation" LOAD_ONLY=True \
        | tee "$OUT/04_ablations.log"
      ;;
    *) echo "unknown part '$part': expected bench, train, ablation or notebooks" >&2; exit 2 ;;
  esac
  echo "$part: $((SECONDS - start)) s" | tee -a "$OUT/timings.txt"
done
