#!/usr/bin/env bash
# Every GPU check and measurement of the package, for one short lease of a GPU machine that has no
# network (its image has its own torch/triton; the pinned packages it lacks travel as wheels in .whl,
# the data as .gpu from scripts/device_bundle.py). Each stage has its own time limit and a failed stage
# does not stop the next; logs and tables go to $OUT (default outputs/device).
#
#   bash scripts/device_checks.sh kernel   # Triton tests on CUDA + scripts/bench_gpu.py --quick      (~6 min)
#   bash scripts/device_checks.sh qa       # SQuAD readers: SRU for QA_MIN, LSTM for 3x that         (~6 min)
#   bash scripts/device_checks.sh lm       # compare_lm.py: hybrid vs GPT-2 vs LSTM, LM_MIN each     (~3 min)
#   bash scripts/device_checks.sh smoke    # the model family on CUDA (tests/models/test_cuda.py) + our kernel
#                                          # at L=1024 B=16 d=2048, no peers                            (~2 min)
#   bash scripts/device_checks.sh kernel qa
#
# DEADLINE (seconds from the start, default 570) caps the qa stage: its budget shrinks to what is left.
# Triton compiles each kernel variant on first use (tens of seconds in all on an H200, 2026-11-30), so
# the warm-up runs compile them before the timed runs; the test stage needed more than 120 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/device}
mkdir -p "$OUT"
QA_MIN=${QA_MIN:-1.0}
QA_BATCH=${QA_BATCH:-64}
LM_MIN=${LM_MIN:-0.5}
DEADLINE=${DEADLINE:-570}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[device_checks +$(elapsed)s] $*"; }

if [ -z "${SKIP_WHEELS:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || { log "wheel install failed"; exit 1; }
else
    export PYTHONPATH=$PWD
fi
export SRU_LM_DATA=${SRU_LM_DATA:-$PWD/.gpu/data} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
if [ -f .gpu/data.tar.xz ] && [ ! -d "$SRU_LM_DATA/squad_shifts" ]; then
    mkdir -p "$SRU_LM_DATA" && tar -xJf .gpu/data.tar.xz -C "$SRU_LM_DATA"
fi
log "setup done"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "
import torch, triton, transformers, datasets, accelerate, tokenizers, pyarrow
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__,
      'datasets', datasets.__version__, 'accelerate', accelerate.__version__, 'tokenizers', tokenizers.__version__,
      'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tail -3

# SQuAD readers load GloVe through the pinned fetch; .gpu carries only the rows they can look up
# (see device_bundle.py), so this wrapper swaps them in and then runs the script unchanged.
cat > /tmp/with_glove_rows.py <<'EOF'
import runpy, sys
import numpy as np
import sru_lm.tasks.vectors as vectors
z = np.load(".gpu/glove_rows.npz")
vectors.load_glove = lambda cache=None: (z["words"].tolist(), z["vectors"])
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
EOF

for stage in "$@"; do
    case $stage in
    kernel)
        log "stage kernel: Triton tests on CUDA"
        timeout 300 python3 -m pytest tests/ops/test_triton.py -q -x -p no:cacheprovider > "$OUT/pytest_triton.log" 2>&1
        echo "pytest exit $?"; tail -15 "$OUT/pytest_triton.log"
        log "stage kernel: bench_gpu --quick"
        timeout 170 python3 scripts/bench_gpu.py --quick --out "$OUT/bench_gpu_h200.md" > "$OUT/bench_gpu.log" 2>&1
        echo "bench_gpu exit $?"; tail -45 "$OUT/bench_gpu.log"
        ;;
    smoke)
        log "stage smoke: model family on CUDA"
        timeout 150 python3 -m pytest tests/models/test_cuda.py -q -p no:cacheprovider > "$OUT/pytest_cuda.log" 2>&1
        echo "pytest exit $?"; tail -25 "$OUT/pytest_cuda.log"
        log "stage smoke: bench_gpu, large size, our kernel and cuDNN only"
        timeout 150 python3 scripts/bench_gpu.py --quick --no-official --no-decode --sizes 1024x16x2048 \
            --out "$OUT/bench_gpu_large.md" > "$OUT/bench_gpu_large.log" 2>&1
        echo "bench_gpu exit $?"; tail -30 "$OUT/bench_gpu_large.log"
        ;;
    qa)
        # what is left before DEADLINE, less ~100 s for data, warm-up and the two dev evaluations, over 4 (1 + 3)
        QA_MIN=$(python3 -c "print(round(max(0.2, min($QA_MIN, ($DEADLINE - $(elapsed) - 100) / 240)), 2))")
        LSTM_MIN=$(python3 -c "print(round(3 * $QA_MIN, 3))")
        log "stage qa: warm-up (kernel compiles outside the timed runs), then SRU ${QA_MIN} min, LSTM ${LSTM_MIN} min"
        timeout 150 python3 scripts/train_qa.py --models sru lstm --max-steps 3 --train-subset 300 --dev-subset 20 \
            --curve-questions 10 --vectors random --batch-size "$QA_BATCH" --threads 0 --clock wall \
            --output-dir /tmp/qa_warm --results /tmp/qa_warm.md > "$OUT/qa_warmup.log" 2>&1 || tail -20 "$OUT/qa_warmup.log"
        timeout $(( DEADLINE - $(elapsed) + 20 )) python3 /tmp/with_glove_rows.py scripts/train_qa.py \
            --models sru lstm --minutes "$QA_MIN" "$LSTM_MIN" --batch-size "$QA_BATCH" \
            --lr 4e-3 --dropout 0.15 --threads 0 --clock wall --eval-every-minutes 0.25 --curve-questions 1000 \
            --output-dir /tmp/qa --results "$OUT/squad_h200.md" --tag h200 ${QA_ARGS:-} > "$OUT/qa.log" 2>&1
        echo "train_qa exit $?"; tr '\r' '\n' < "$OUT/qa.log" | grep -E "^(data|==|\[eval\]|results)|Error|error" | tail -40
        ;;
    lm)
        log "stage lm: warm-up, then compare_lm ${LM_MIN} min per model"
        timeout 150 python3 scripts/compare_lm.py --models hybrid --max-steps 3 --no-final-eval --threads 0 \
            --cache-dir .gpu/lm_cache --work-dir /tmp/compare_warm --out /tmp/compare_warm > "$OUT/lm_warmup.log" 2>&1 \
            || tail -20 "$OUT/lm_warmup.log"
        timeout 240 python3 scripts/compare_lm.py --minutes "$LM_MIN" --threads 0 --clock wall \
            --eval-every-minutes 0.1 --cache-dir .gpu/lm_cache --work-dir /tmp/compare_lm \
            --out "$OUT/compare_lm_h200" ${LM_ARGS:-} > "$OUT/compare_lm.log" 2>&1
        echo "compare_lm exit $?"; tr '\r' '\n' < "$OUT/compare_lm.log" | grep -E "^(==|\[eval\]|\|)|Error|error" | tail -40
        ;;
    *) log "unknown stage $stage (kernel, qa, lm)" ;;
    esac
done
log "done"
