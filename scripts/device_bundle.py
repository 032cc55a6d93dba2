"""Pack what ``scripts/device_checks.sh`` needs on a GPU machine that has no network into ``.gpu/`` and ``.whl/``.

    python scripts/device_bundle.py                 # data, wheels, and a check that the Triton cache is current
    python scripts/device_bundle.py --only triton   # (re)build .gpu/triton_cache if triton_kernels.py changed
    # then: run(command="bash scripts/device_checks.sh all", carry=[".gpu", ".whl"])

- ``.gpu/data.tar.xz``: the fetched ``gutenberg`` and ``squad_shifts`` cache folders (with their fetch
  markers; ``fetch`` re-verifies their digests there).
- ``.gpu/glove_rows.npz``: the GloVe 6B 50d rows the SQuAD readers can ever look up (every lower-cased
  token of SQuADShifts and SQuAD dev) plus the first 20,000 rows (``embedding_matrix`` takes its random
  init scale from them), in file order. With it ``train_qa.py`` builds exactly the embedding matrix the
  full 76 MB file gives; ``device_checks.sh`` swaps it in for ``load_glove``.
- ``.gpu/lm_cache``: the tokenizer and token streams of the default LM data (skips retraining them).

- ``.gpu/triton_cache``: every Triton kernel variant the device stages launch, compiled for sm_90 with the
  image's Triton 3.6.0 (``scripts/triton_aot.py``, about 10 minutes on 2 cores; rebuilt here only when
  ``sru_lm/ops/triton_kernels.py`` changed since, or with ``--only triton``).
- ``.whl``: wheels of the pinned versions the device image lacks (:data:`WHEELS`; the image has transformers
  5.17.0, datasets none, sru none), for its Python 3.12. ``sru`` 2.6.0 (24 KB, its C++/CUDA source inside)
  is the official peer of ``scripts/bench_gpu.py``, which builds its kernel there from a patched copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from sru_lm.data.fetch import cache_dir, fetch
from sru_lm.data.squad import load_squad_dev, load_squad_shifts
from sru_lm.tasks.qa_data import featurize
from sru_lm.tasks.vectors import load_glove

OUT = Path(".gpu")
WHEELS = ["transformers==5.24.0", "datasets==5.2.0", "sru==2.6.0"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "any"]
TRAVEL_LIMIT = 64 * 2**20  # the device tool's limit on what travels


def wheels() -> None:
    """Wheels of :data:`WHEELS` for the image's CPython 3.12, without dependencies (the image has them)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", "-d", ".whl"]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + WHEELS, check=True)


def triton_cache(rebuild: bool) -> None:
    """Rebuild ``.gpu/triton_cache`` when the kernels changed since it was compiled (or when asked)."""
    manifest = OUT / "triton_cache" / "manifest.json"
    kernels = hashlib.sha256(Path("sru_lm/ops/triton_kernels.py").read_bytes()).hexdigest()
    if not rebuild and manifest.exists() and json.loads(manifest.read_text())["kernels_sha256"] == kernels:
        print(f"{manifest.parent} is current ({len(json.loads(manifest.read_text())['variants'])} variants)")
        return
    subprocess.run([sys.executable, "scripts/triton_aot.py"], check=True)


def data() -> None:
    OUT.mkdir(exist_ok=True)
    root = cache_dir()
    for name in ("gutenberg", "squad_shifts"):
        fetch(name)
    with tarfile.open(OUT / "data.tar.xz", "w:xz") as tar:
        for name in ("gutenberg", "squad_shifts"):
            tar.add(root / name, arcname=name)
    words, vectors = load_glove()
    needed: set[str] = set()
    for ds in (load_squad_shifts(), load_squad_dev()):
        feats, _ = featurize(ds)
        for f in feats:
            needed.update(t.lower() for t in f.question_tokens)
            needed.update(t.lower() for t in f.context_tokens)
    rows = sorted(set(range(20000)) | {i for i, w in enumerate(words) if w in needed})
    np.savez(OUT / "glove_rows.npz", words=np.array([words[i] for i in rows]), vectors=np.asarray(vectors[rows]))
    if Path("outputs/cache").is_dir():
        shutil.copytree("outputs/cache", OUT / "lm_cache", dirs_exist_ok=True)
    print(f"{len(rows)} GloVe rows of {len(words)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["data", "wheels", "triton"], action="append",
                   help="build only these parts (repeatable); default: all, the Triton cache only if stale")
    args = p.parse_args()
    parts = args.only or ["data", "wheels", "triton"]
    if "data" in parts:
        data()
    if "wheels" in parts:
        wheels()
    if "triton" in parts:
        triton_cache(rebuild=args.only is not None)
    total = sum(p.stat().st_size for d in (OUT, Path(".whl")) if d.is_dir() for p in d.rglob("*") if p.is_file())
    print(f".gpu and .whl hold {total / 2**20:.1f} MiB (the device tool carries at most {TRAVEL_LIMIT / 2**20:.0f} MiB "
          "with the working tree)")


if __name__ == "__main__":
    main()
