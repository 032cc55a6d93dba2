#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs sru_lm into it.
# torch is installed first, pinned to the CPU build 2.13.0 that this kind of machine keeps on disk,
# so no dependency can pull a several-GB CUDA build. Re-running is cheap: a stamp records the hash of
# pyproject.toml and of this script, and the install is skipped while both are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SRU_LM_VENV:-.venv}
TORCH_SPEC=${SRU_LM_TORCH:-torch==2.13.0}
EXTRAS=${SRU_LM_EXTRAS:-dev,bench}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.sru_lm_stamp"
want=$(cat pyproject.toml scripts/setup_env.sh | sha256sum | cut -d' ' -f1)-$EXTRAS
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing $TORCH_SPEC, then sru_lm[$EXTRAS] (editable)"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"
