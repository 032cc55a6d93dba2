#!/usr/bin/env bash
# Every GPU check and measurement of the package, for one short lease of a GPU machine with no network
# (its image has its own torch 2.11 / triton 3.6; what it lacks travels: wheels in .whl, the official sru's
# among them, data and the ahead-of-time compiled Triton kernels in .gpu, all made by
# scripts/device_bundle.py). Each stage has its own time limit, a failed stage does not stop the next, and
# the whole run ends by DEADLINE.
#
#   bash scripts/device_checks.sh all      # tests kernel model qa lm, about 9 minutes
#   bash scripts/device_checks.sh tests    # tests/ops/test_triton.py + tests/models/test_cuda.py on CUDA
#   bash scripts/device_checks.sh kernel   # scripts/bench_gpu.py: checks, sweep -> defaults table, decode
#   bash scripts/device_checks.sh model    # scripts/bench_gpu_model.py: ~125M SRU++ vs GPT-2, train + generate
#   bash scripts/device_checks.sh qa       # SQuAD readers: SRU for QA_MIN minutes, LSTM for 3x that
#   bash scripts/device_checks.sh lm       # compare_lm.py: hybrid vs GPT-2 vs LSTM, LM_MIN minutes each
#   bash scripts/device_checks.sh smoke    # model family on CUDA + the kernel at L=1024 B=16 d=2048 (~2 min)
#
# Triton: .gpu/triton_cache holds every kernel variant the kernel, model and test stages launch, compiled
# for sm_90 with Triton 3.6.0 (scripts/triton_aot.py). `install` re-keys it for this machine's Triton into
# TRITON_CACHE_DIR; each stage then says how many kernels it still had to compile, and the bench reports
# list each kernel as `cache` or `COMPILED`.
#
# Output: $OUT (default outputs/device) gets at most 8 files (the device tool's limit): this run's log,
# the benchmark tables (dated, with the machine), and logs.tar.gz with every stage's full log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/device}
mkdir -p "$OUT" /tmp/device_logs
LOGS=/tmp/device_logs
exec > >(tee -a "$OUT/device_checks.log") 2>&1
DEADLINE=${DEADLINE:-530}
QA_MIN=${QA_MIN:-0.4}
QA_BATCH=${QA_BATCH:-64}
LM_MIN=${LM_MIN:-0.25}
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { echo "[device_checks +$(elapsed)s] $*"; }
note() { log "$*"; echo "[+$(elapsed)s] $*" >> "$LOGS/summary.txt"; }  # repeated at the end of the output
# a stage's limit: its own cap, or what is left before DEADLINE, whichever is smaller
limit() { local left=$(( DEADLINE - $(elapsed) )); echo $(( $1 < left ? $1 : (left > 5 ? left : 5) )); }

if [ -z "${SKIP_WHEELS:-}" ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD || { log "wheel install failed"; exit 1; }
else
    export PYTHONPATH=$PWD
fi
export SRU_LM_DATA=${SRU_LM_DATA:-$PWD/.gpu/data} HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
if [ -f .gpu/data.tar.xz ] && [ ! -d "$SRU_LM_DATA/squad_shifts" ]; then
    mkdir -p "$SRU_LM_DATA" && tar -xJf .gpu/data.tar.xz -C "$SRU_LM_DATA"
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "
import torch, triton, transformers
print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__,
      'cuda', torch.cuda.is_available())" 2>&1 | tail -3
if [ -f .gpu/triton_cache/manifest.json ]; then
    note "$(python3 sru_lm/ops/triton_aot.py install --cache-dir .gpu/triton_cache --to "$TRITON_CACHE_DIR" 2>&1 | tail -1)"
else
    note "no .gpu/triton_cache (scripts/triton_aot.py): every kernel compiles on first use"
fi
cubins() { find "$TRITON_CACHE_DIR" -name '*.cubin' 2>/dev/null | wc -l; }
compiled_since() { echo "$(( $(cubins) - $1 )) Triton kernels compiled during this stage (0 = all from the AOT cache)"; }
log "setup done"

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

stages=("$@")
[ "${1:-}" = all ] && stages=(tests kernel model qa lm)
for stage in "${stages[@]}"; do
    n0=$(cubins)
    case $stage in
    tests)
        log "stage tests: Triton kernels and the model family on CUDA"
        timeout "$(limit 80)" python3 -m pytest tests/ops/test_triton.py tests/models/test_cuda.py -q -p no:cacheprovider \
            > "$LOGS/pytest_cuda.log" 2>&1
        note "tests: pytest exit $? ($(tail -1 "$LOGS/pytest_cuda.log"))"; tail -15 "$LOGS/pytest_cuda.log"
        ;;
    kernel)
        log "stage kernel: bench_gpu (checks, sweep, timings, decode)"
        # 150 s: the official sru's kernel compiles (nvcc, up to 90 s waited for) beside the checks and the
        # sweep, then is timed beside ours
        timeout "$(limit 150)" python3 scripts/bench_gpu.py --out "$OUT/bench_gpu_h200.md" > "$LOGS/bench_gpu.log" 2>&1
        note "kernel: bench_gpu exit $?"; grep -E "^(check|timed|\| (floor|ours|our layer|cuDNN|official|L=))|^- L=|^Official sru|^official sru|COMPILED|kernels loaded" \
            "$LOGS/bench_gpu.log" | tail -50
        ;;
    model)
        log "stage model: bench_gpu_model (~125M SRU++ vs GPT-2: training tokens/s, generate)"
        timeout "$(limit 150)" python3 scripts/bench_gpu_model.py --repeats 2 --out "$OUT/bench_gpu_model_h200.md" \
            > "$LOGS/bench_gpu_model.log" 2>&1
        note "model: bench_gpu_model exit $?"; grep -E "^\||kernels loaded|COMPILED|Error" "$LOGS/bench_gpu_model.log" | tail -25
        ;;
    smoke)
        log "stage smoke: model family on CUDA, our kernel at the large size"
        timeout "$(limit 100)" python3 -m pytest tests/models/test_cuda.py -q -p no:cacheprovider > "$LOGS/pytest_smoke.log" 2>&1
        echo "pytest exit $?"; tail -10 "$LOGS/pytest_smoke.log"
        timeout "$(limit 100)" python3 scripts/bench_gpu.py --no-sweep --no-decode --no-official --sizes 1024x16x2048 \
            --out "$OUT/bench_gpu_large.md" > "$LOGS/bench_gpu_large.log" 2>&1
        echo "bench_gpu exit $?"; tail -30 "$LOGS/bench_gpu_large.log"
        ;;
    qa)
        # what is left before DEADLINE less ~110 s (lm after it, data, warm-up, evaluations), over 4 (1 + 3)
        QA_MIN=$(python3 -c "print(round(max(0.2, min($QA_MIN, ($DEADLINE - $(elapsed) - 170) / 240)), 2))")
        LSTM_MIN=$(python3 -c "print(round(3 * $QA_MIN, 3))")
        log "stage qa: warm-up, then SRU ${QA_MIN} min, LSTM ${LSTM_MIN} min"
        timeout "$(limit 60)" python3 scripts/train_qa.py --models sru lstm --max-steps 3 --train-subset 300 --dev-subset 20 \
            --curve-questions 10 --vectors random --batch-size "$QA_BATCH" --threads 0 --clock wall \
            --output-dir /tmp/qa_warm --results /tmp/qa_warm.md > "$LOGS/qa_warmup.log" 2>&1 || tail -20 "$LOGS/qa_warmup.log"
        timeout "$(limit $(( DEADLINE - $(elapsed) - 60 )))" python3 /tmp/with_glove_rows.py scripts/train_qa.py \
            --models sru lstm --minutes "$QA_MIN" "$LSTM_MIN" --batch-size "$QA_BATCH" \
            --lr 4e-3 --dropout 0.15 --threads 0 --clock wall --eval-every-minutes 0.25 --curve-questions 1000 \
            --output-dir /tmp/qa --results "$OUT/squad_h200.md" --tag h200 ${QA_ARGS:-} > "$LOGS/qa.log" 2>&1
        note "qa: train_qa exit $?"; tr '\r' '\n' < "$LOGS/qa.log" | grep -E "^(data|==|\[eval\]|results)|Error|error" | tail -30
        ;;
    lm)
        log "stage lm: warm-up, then compare_lm ${LM_MIN} min per model"
        timeout "$(limit 60)" python3 scripts/compare_lm.py --models hybrid --max-steps 3 --no-final-eval --threads 0 \
            --cache-dir .gpu/lm_cache --work-dir /tmp/compare_warm --out /tmp/compare_warm > "$LOGS/lm_warmup.log" 2>&1 \
            || tail -20 "$LOGS/lm_warmup.log"
        timeout "$(limit 200)" python3 scripts/compare_lm.py --minutes "$LM_MIN" --threads 0 --clock wall \
            --eval-every-minutes 0.1 --cache-dir .gpu/lm_cache --work-dir /tmp/compare_lm \
            --out /tmp/compare_lm_h200 ${LM_ARGS:-} > "$LOGS/compare_lm.log" 2>&1
        note "lm: compare_lm exit $?"; tr '\r' '\n' < "$LOGS/compare_lm.log" | grep -E "^(==|\[eval\]|\|)|Error|error" | tail -30
        cp /tmp/compare_lm_h200.md "$OUT/compare_lm_h200.md" 2>/dev/null; cp /tmp/compare_lm_h200.json "$LOGS/" 2>/dev/null
        ;;
    *) log "unknown stage $stage (all, tests, kernel, model, smoke, qa, lm)" ;;
    esac
    note "$stage: $(compiled_since "$n0")"
done
tar -czf "$OUT/logs.tar.gz" -C /tmp device_logs 2>/dev/null
echo "==== summary"; cat "$LOGS/summary.txt"
log "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
sleep 1  # let tee write the last lines into $OUT/device_checks.log
