#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv (see setup_env.sh), then fetch the corpus, train the
# tokenizer, train a small hybrid SRU++ LM for a bounded time, evaluate, save and sample (main_lm.py).
# Extra arguments go to scripts/main_lm.py (e.g. --max-minutes 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python scripts/main_lm.py "$@"
