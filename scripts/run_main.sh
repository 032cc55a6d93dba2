#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv (see setup_env.sh), then run the demo.
# Extra arguments go to the demo script.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python scripts/demo_sru.py "$@"
