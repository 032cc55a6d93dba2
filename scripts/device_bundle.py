"""Pack what ``scripts/device_checks.sh`` needs on a GPU machine that has no network into ``.gpu/``.

    python scripts/device_bundle.py            # then carry .gpu and .whl to the device machine

- ``.gpu/data.tar.xz``: the fetched ``gutenberg`` and ``squad_shifts`` cache folders (with their fetch
  markers; ``fetch`` re-verifies their digests there).
- ``.gpu/glove_rows.npz``: the GloVe 6B 50d rows the SQuAD readers can ever look up (every lower-cased
  token of SQuADShifts and SQuAD dev) plus the first 20,000 rows (``embedding_matrix`` takes its random
  init scale from them), in file order. With it ``train_qa.py`` builds exactly the embedding matrix the
  full 76 MB file gives; ``device_checks.sh`` swaps it in for ``load_glove``.
- ``.gpu/lm_cache``: the tokenizer and token streams of the default LM data (skips retraining them).

Wheels of the pinned versions that the device image lacks go to ``.whl`` (see the device notes).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import numpy as np

from sru_lm.data.fetch import cache_dir, fetch
from sru_lm.data.squad import load_squad_dev, load_squad_shifts
from sru_lm.tasks.qa_data import featurize
from sru_lm.tasks.vectors import load_glove

OUT = Path(".gpu")


def main() -> None:
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
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(rows)} GloVe rows of {len(words)}; .gpu holds {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
