"""Compile, with no GPU, every Triton kernel variant a device run launches, for the H200 (sm_90) and the
device image's Triton (3.6.0), into ``.gpu/triton_cache``, which travels with the run; and write what the
compiled code holds (registers, spills, SASS per time step) to ``benchmarks/triton_sm90_static.md``.
``sru_lm.ops.triton_aot`` explains how Triton keys its cache and how the device finds these kernels.

    python3 -m venv .cache/triton36 && .cache/triton36/bin/pip install triton==3.6.0      # once
    .cache/triton36/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d .cache/wheels triton==3.6.0                     # once: the device's wheel
    (cd .cache && mkdir -p triton36_cp312 && unzip -qo wheels/triton-3.6.0-cp312*.whl 'triton/*' -d triton36_cp312)
    python scripts/triton_aot.py                   # record, compile (~10 min on 2 cores), bundle, static table

On the device, ``scripts/device_checks.sh`` installs the bundle first (``sru_lm/ops/triton_aot.py install``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sru_lm.bench import triton_aot as build
from sru_lm.bench.machine import command_line, now
from sru_lm.ops import triton_aot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=".cache/triton36/bin/python", help="an interpreter with triton==3.6.0")
    p.add_argument("--libtriton", default=".cache/triton36_cp312/triton/_C/libtriton.so",
                   help="libtriton.so of the device's wheel (cp312): keys as the device computes them")
    p.add_argument("--full-dir", default=".cache/aot/full", help="every artefact (TTGIR, PTX, cubin), kept here")
    p.add_argument("--out", default=".gpu/triton_cache", help="what travels: cubins, metadata, manifest")
    p.add_argument("--static", default="benchmarks/triton_sm90_static.md")
    p.add_argument("--no-model", action="store_true", help="leave out the ~125M model's variants")
    p.add_argument("--no-tests", action="store_true", help="leave out tests/ops/test_triton.py's variants")
    p.add_argument("--static-only", action="store_true", help="only re-read --full-dir into the static table")
    args = p.parse_args()

    if not args.static_only:
        variants = build.record_device_run(model=not args.no_model, tests=not args.no_tests)
        print(f"{len(variants)} distinct variants; compiling for sm_90 with {args.python}", flush=True)
        libtriton = args.libtriton if Path(args.libtriton).exists() else None
        build.compile_in(args.python, variants, Path(args.full_dir), libtriton)
        nbytes = triton_aot.bundle(args.full_dir, args.out)
        print(f"{args.out}: {nbytes / 2**20:.1f} MiB")

    manifest = json.loads((Path(args.full_dir) / "manifest.json").read_text())
    rows = build.static_rows(args.python, Path(args.full_dir))
    Path(args.static).write_text("\n".join([
        f"# Triton kernels compiled for sm_90, read without a GPU ({now()})", "",
        f"- triton {manifest['triton']} (ptxas, cuobjdump and nvdisasm from its package), target sm_90; "
        f"keys as libtriton sha256 {manifest['libtriton_sha256'][:16]}...",
        f"- command: `{command_line()}`; what the columns mean: sru_lm/ops/TRITON_NOTES.md",
        "- per step = loop instructions / time steps per iteration (T for the tile kernels, 1 for the step kernels)",
        "", build.static_markdown(rows), "",
    ]))
    print(f"wrote {args.static}")


if __name__ == "__main__":
    main()
