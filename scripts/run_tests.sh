#!/usr/bin/env bash
# Installs everything into .venv (see setup_env.sh) and runs the test suite on the CPU.
# Triton kernels run under the Triton interpreter (TRITON_INTERPRET=1) so CI checks their logic.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TRITON_INTERPRET=${TRITON_INTERPRET:-1}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
