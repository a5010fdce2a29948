#!/usr/bin/env bash
# Check a CUDA machine end to end from a fresh checkout, in at most 8 minutes:
#   1. set up (uv, the locked environment);
#   2. the tests marked `gpu`;
#   3. the training throughput benchmark (benchmarks/throughput.py, critbatch path vs plain loop);
#   4. a short real sweep of a paper workload (ResNet-34 on CIFAR-10, batch sizes 128..2048, the
#      LR searched at each) on CIFAR-10 files the script writes in the real on-disk format,
#      through Ray Tune, Optuna and MLflow, then the analysis report with its figures.
# Logs, JSON results, the MLflow store, the run folder and the report go under $OUT (a new
# temporary folder when unset); $OUT/summary.txt says what ran and how long each step took.
# Without CUDA (or with GPU_CHECK_DEVICE=cpu) it runs the same steps on the CPU at a toy size
# (AlexNet on CIFAR-10 instead of ResNet-34, a few steps) and says so; the test suite runs it
# that way (tests/test_gpu_check.py), so the script cannot rot.
#
#   bash scripts/gpu_check.sh                  # auto: cuda if torch sees a GPU
#   OUT=/tmp/check GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/critbatch-gpu-check.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
START=$SECONDS
FAILED=()

say() { echo "[gpu_check +$((SECONDS - START))s] $*" | tee -a "$OUT/summary.txt"; }

# step NAME LOG CMD...: runs CMD with its output in $OUT/LOG; records the outcome, goes on.
step() {
    local name=$1 logfile=$2 t0=$SECONDS
    shift 2
    say "$name: $*"
    if "$@" >"$OUT/$logfile" 2>&1; then
        say "$name: ok in $((SECONDS - t0)) s (log $logfile)"
    else
        say "$name: FAILED (exit $?) after $((SECONDS - t0)) s; last lines of $logfile:"
        tail -n 25 "$OUT/$logfile" | tee -a "$OUT/summary.txt"
        FAILED+=("$name")
    fi
}

say "output folder: $OUT"
# uv: the one that launched us (`uv run` sets $UV), one on PATH, or python3's; pip installs it
# only when none is found (a venv's python3, e.g. under `uv run`, has no pip)
if [[ -n ${UV:-} && -x ${UV:-} ]]; then
    UVC=("$UV")
elif command -v uv >/dev/null 2>&1; then
    UVC=(uv)
else
    python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
    UVC=(python3 -m uv)
fi
step setup setup.log "${UVC[@]}" sync --frozen
PY=("${UVC[@]}" run --frozen --no-sync)

MODE=${GPU_CHECK_DEVICE:-auto}
if [[ $MODE == auto ]]; then
    if "${PY[@]}" python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
        MODE=cuda
    else
        MODE=cpu
    fi
fi
case $MODE in
cuda)
    "${PY[@]}" python -c "import torch; print('CUDA:', torch.cuda.get_device_name(0), '| torch', torch.__version__)" |
        tee -a "$OUT/summary.txt"
    # The paper's ResNet-34 at three batch sizes, 4 LR trials each, a quarter GPU per trial.
    WORKLOAD=cifar10_resnet34 N_TRAIN=10000 N_TEST=2000
    BATCH_SIZES="[128, 512, 2048]" TRIALS=4 MAX_STEPS=200 EVAL_EVERY=20 GPUS=0.25
    THROUGHPUT=(--device cuda --batch-sizes 128,1024 --steps 20 --warmup 5 --train-size 20000)
    ANALYZE=(--analyze)
    ;;
cpu)
    say "NO CUDA: running the same steps on the CPU at a toy size (AlexNet instead of" \
        "ResNet-34, batch sizes 8 and 32, 4 steps a trial: too few to reach the target, so no" \
        "analysis report; the throughput benchmark's input pipelines alone, batch size 4); the" \
        "gpu tests skip. This checks the script and the code paths, not a GPU."
    export CUDA_VISIBLE_DEVICES=""
    WORKLOAD=cifar10_alexnet N_TRAIN=400 N_TEST=100
    BATCH_SIZES="[8, 32]" TRIALS=2 MAX_STEPS=4 EVAL_EVERY=2 GPUS=0
    # the input pipelines alone: one ResNet-34 step takes minutes on a busy 2-core CPU
    THROUGHPUT=(--device cpu --data-only --batch-sizes 4 --steps 1 --warmup 0 --train-size 64 --workers 0)
    ANALYZE=()
    ;;
*)
    echo "GPU_CHECK_DEVICE=$MODE: use auto, cuda or cpu" >&2
    exit 2
    ;;
esac

mapfile -t GPU_TEST_FILES < <(grep -l "pytest.mark.gpu" tests/test_*.py)
step gpu-tests gpu_tests.log "${PY[@]}" pytest -m gpu -ra -p no:cacheprovider \
    --junitxml "$OUT/gpu_tests.xml" "${GPU_TEST_FILES[@]}"
grep -E "^(=+ .*(passed|skipped|failed|error).* =+)$" "$OUT/gpu_tests.log" | tail -n 1 |
    sed 's/^/  gpu tests: /' | tee -a "$OUT/summary.txt" || true

step throughput throughput.log "${PY[@]}" python benchmarks/throughput.py "${THROUGHPUT[@]}" \
    --json "$OUT/throughput.json"

# CIFAR-10 in its real on-disk format (the pickled batches torchvision's download leaves),
# each image tinted with its class's colour so that training reaches the target.
step data data.log "${PY[@]}" python -c "
import sys; sys.path.insert(0, 'tests')
from datafiles import write_cifar10
print(write_cifar10('$OUT/data', n_train=$N_TRAIN, n_test=$N_TEST, learnable=True))"

step sweep sweep.log "${PY[@]}" critbatch run "tune_jobs/jobs/paper_${WORKLOAD}_tuned.yaml" \
    --set name=gpu-check --set tracking.experiment=gpu-check \
    --set "tracking.uri=sqlite:///$OUT/mlflow.db" --set "storage=$OUT/runs" \
    --set "data.root=$OUT/data" --set "batch_sizes=$BATCH_SIZES" \
    --set lr_search.trials_per_batch_size=$TRIALS --set lr_search.min=0.001 \
    --set lr_search.max=1.0 --set budget.max_steps=$MAX_STEPS --set eval_every=$EVAL_EVERY \
    --set strategy.warmup_steps=0 --set target.value=0.8 --set checkpoint_every=0 \
    --set early_stopping.grace_steps=$((2 * EVAL_EVERY)) --set "options={eval_limit: 0}" \
    --set resources.cpus=1 --set resources.gpus=$GPUS --set "resources.gpus_from_batch_size={}" \
    --no-progress "${ANALYZE[@]}"

# What the sweep left: every trial in MLflow with a final status, none errored; on cuda also
# trials that reached the target and the report's figures.
step sweep-check sweep_check.log "${PY[@]}" python -c "
import sys
from pathlib import Path
import mlflow
mlflow.set_tracking_uri('sqlite:///$OUT/mlflow.db')
runs = mlflow.search_runs(experiment_names=['gpu-check'], filter_string=\"tags.\`critbatch.role\` = 'trial'\")
status = runs['tags.critbatch.status'].value_counts().to_dict() if len(runs) else {}
figures = sorted(p.name for p in Path('$OUT/runs/gpu-check/report').rglob('*.png'))
print('trials:', len(runs), 'statuses:', status)
print('figures:', figures)
ok = len(runs) > 0 and 'errored' not in status and set(status) <= {'reached', 'not_reached', 'diverged', 'stopped_early'}
sys.exit(0 if ok and ('$MODE' == 'cpu' or ('reached' in status and figures)) else 1)"
cat "$OUT/sweep_check.log" | sed 's/^/  /' | tee -a "$OUT/summary.txt"

ELAPSED=$((SECONDS - START))
if [[ $MODE == cuda && $ELAPSED -gt 480 ]]; then
    say "over the 8-minute goal: ${ELAPSED} s"
fi
if ((${#FAILED[@]})); then
    say "FAILED on $MODE: ${FAILED[*]} (total ${ELAPSED} s); everything is under $OUT"
    exit 1
fi
say "all steps passed on $MODE in ${ELAPSED} s; logs, throughput.json, the MLflow store and" \
    "the run folder$([[ $MODE == cuda ]] && echo ", with the report's figures (runs/gpu-check/report),") are under $OUT"
