"""Suite-wide setup. Triton's interpreter must be chosen before triton is first imported (importing
sru_lm imports it through torch._dynamo), so without CUDA the kernels run under the interpreter."""

from __future__ import annotations

import os
import shutil

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
