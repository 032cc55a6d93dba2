"""Ahead-of-time compilation of the Triton kernels, so that a GPU lease spends no time compiling.

Two places, one file (torch-free: run it by path, ``python sru_lm/ops/triton_aot.py ...``; it loads
``triton_kernels.py`` by path too):

- **here**, without a GPU, under the device image's Triton (3.6.0, installed in its own venv):
  ``compile`` builds, for sm_90, every kernel variant a device run will launch (the list is recorded by
  ``scripts/triton_aot.py`` from the package's GPU benchmarks, see
  :func:`sru_lm.ops.triton_backend.recording`) into a cache folder, with ``manifest.json``;
- **on the device**: ``install`` copies them to where that machine's Triton looks, under the key it
  computes there, and :func:`watch` reports, for every kernel the run then loads, whether it came from
  the cache.

How Triton 3.6 finds a compiled kernel (read in its source: ``runtime/jit.py``, ``compiler/compiler.py``,
``runtime/cache.py``), and what this module does about each part:

1. ``JITFunction.run`` binds the arguments and *specializes* them: pointers by dtype and by 16-byte
   alignment of ``data_ptr()`` (attribute ``tt.divisibility``), ints by value == 1 (made constexpr) and
   divisibility by 16 (unless ``do_not_specialize``, as L and B are), floats as fp32; constexprs by
   value; options (num_warps, num_stages, debug, ...) by ``backend.parse_options``. A mock argument with
   the same dtype string (``"torch.bfloat16"``) and the same ``data_ptr() % 16`` reproduces it exactly, so
   :func:`compile_variants` launches through the JIT itself (``warmup``) under a fake driver whose target
   is ``GPUTarget("cuda", 90, 32)``.
2. On a miss in its in-memory table, it calls ``compile``, which looks on disk under
   ``sha256(f"{triton_key()}-{src.hash()}-{backend.hash()}-{options.hash()}-{env_vars}")``:
   ``triton_key`` hashes Triton's own Python files **and the bytes of ``libtriton.so``** (a cp311 and a
   cp312 wheel of the same version differ there); ``src.hash`` hashes the kernel's source, the line it
   starts on and the sources of the ``@triton.jit`` helpers it calls, the signature, the divisibility
   attributes and the constexpr values; ``backend.hash`` is ptxas's version string and the arch;
   ``options.hash`` includes libdevice's file hash; ``env_vars`` are the cache-invalidating variables
   that are set (none by default).
3. A cache entry's group file (``__grp__<kernel>.json``) lists its files by **absolute path**, and a
   path that does not exist there counts as a miss: a cache built in ``/work/main/.gpu`` is not found
   from a checkout elsewhere.

So ``install`` recomputes each variant's key with the device's own Triton (:func:`runtime_key`, the JIT's
binder and ``get_cache_key`` on the same mock launch, compiling nothing) and writes the files and a
group file with that machine's paths. Equal keys here and there mean the toolchains match; unequal
keys (another ``libtriton.so`` build) still give cache hits, and ``install`` says which part differed.
The per-signature C launcher (``__triton_launcher``, a few hundred lines of C) is still built by gcc on
first use there, against that Python's headers: about half a second per kernel signature.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

KERNELS_PY = Path(__file__).with_name("triton_kernels.py")
MODULE = "sru_lm.ops.triton_kernels"


def load_kernels():
    """The kernel module: the package's own if it is imported, else loaded by path (no torch needed)."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    spec = importlib.util.spec_from_file_location(MODULE, KERNELS_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = mod
    spec.loader.exec_module(mod)
    return mod


class _MockArg:
    """A tensor argument as the JIT's specializer sees it: a dtype string and data_ptr() % 16."""

    def __init__(self, dtype: str, misalign: int = 0):
        self.dtype = dtype
        self._ptr = misalign

    def data_ptr(self) -> int:
        return self._ptr


class _FakeDriver:
    """Enough of a driver for JITFunction.run(warmup=True): a target, device 0, stream 0."""

    def __init__(self, target):
        self.target = target

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return None


def mock_args(described: list) -> list:
    """Arguments rebuilt from :func:`sru_lm.ops.triton_backend._describe` records."""
    out = []
    for kind, *rest in described:
        out.append(_MockArg(rest[0], rest[1]) if kind == "tensor" else rest[0])
    return out


@contextlib.contextmanager
def offline_target(arch: int = 90):
    """Make Triton compile for ``sm_<arch>`` with no GPU here."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime.driver import driver

    previous = driver._active
    driver.set_active(_FakeDriver(GPUTarget("cuda", arch, 32)))
    try:
        yield
    finally:
        driver._active = previous


def runtime_key(jit_fn, args: list, meta: dict) -> tuple[str, dict]:
    """The on-disk cache hash the JIT computes for this launch on the active driver, compiling nothing.

    The JIT's own binder runs (``warmup``); its ``_do_compile`` is intercepted, and the key is built from
    what it receives exactly as ``triton.compile`` builds it."""
    from triton._C.libtriton import get_cache_invalidating_env_vars
    from triton.compiler.compiler import ASTSource, make_backend
    from triton.runtime.cache import get_cache_key
    from triton.runtime.driver import driver

    got: dict = {}

    def capture(key, signature, device, constexprs, options, attrs, warmup):
        target = driver.active.get_current_target()
        backend = make_backend(target)
        src = ASTSource(jit_fn, signature, constexprs, attrs)
        opts = backend.parse_options(dict(options.__dict__))
        env = get_cache_invalidating_env_vars()
        key = get_cache_key(src, backend, opts, env)
        got.update(hash=hashlib.sha256(key.encode()).hexdigest(), signature=dict(signature),
                   backend_hash=backend.hash(), options_hash=opts.hash(), src_hash=src.hash(), env=env)
        return None

    # a fresh in-memory table (so the binder runs to _do_compile), and _do_compile shadowed for this call
    caches, jit_fn.device_caches = jit_fn.device_caches, collections.defaultdict(jit_fn.create_binder)
    jit_fn._do_compile = capture
    try:
        jit_fn.warmup(*args, grid=(1,), **meta)
    finally:
        del jit_fn._do_compile
        jit_fn.device_caches = caches
    return got.pop("hash"), got


def _variant_id(v: dict) -> str:
    return json.dumps([v["kernel"], v["args"], sorted(v["meta"].items())], sort_keys=True)


def unique_variants(records: list[dict]) -> list[dict]:
    """Launch records that compile to distinct kernels (ints other than H do not specialize)."""
    seen, out = set(), []
    for r in records:
        key = _variant_id(_normalized(r))
        if key not in seen:
            seen.add(key)
            out.append(_normalized(r))
    return out


def _normalized(r: dict) -> dict:
    # What Triton 3.6 keys an int on: i32 or i64, and (unless do_not_specialize, as L and B are) == 1 or
    # divisible by 16. Floats: only their type. Each value is replaced by one of its class.
    args = []
    for i, a in enumerate(r["args"]):
        if a[0] == "float":
            a = ["float", 1.0]
        elif a[0] == "int":
            v, big = a[1], abs(a[1]) >= 2**31
            if _int_role(r["kernel"], i) in ("L", "B"):
                v = 2
            elif v != 1:
                v = 16 if v % 16 == 0 else 17
            a = ["int", v + (2**32 if big else 0)]
        args.append(a)
    return {"kernel": r["kernel"], "args": args, "meta": r["meta"]}


def _int_role(kernel_name: str, i: int) -> str:
    fn = getattr(load_kernels(), kernel_name)
    return fn.arg_names[i]


def triton_key_parts() -> dict:
    """What enters ``triton_key()``, summarized: to tell which part differs between two machines."""
    import sysconfig

    import triton
    from triton.runtime.cache import triton_key

    root = Path(triton.__file__).parent
    ext = sysconfig.get_config_var("EXT_SUFFIX").split(".")[-1]
    lib = root / "_C" / f"libtriton.{ext}"
    return {"triton": triton.__version__, "triton_key": hashlib.sha256(triton_key().encode()).hexdigest(),
            "libtriton_sha256": hashlib.sha256(lib.read_bytes()).hexdigest()}


@contextlib.contextmanager
def keyed_as(libtriton: str | Path | None):
    """Compute cache keys as a Triton whose ``libtriton.so`` is the given file (the device's wheel for
    another Python: the same Python sources, another binary) would: ``triton_key()`` with that file's
    hash in place of ours. Nothing else in the key depends on the Python version."""
    if libtriton is None:
        yield
        return
    import triton.runtime.cache as tc

    ours = triton_key_parts()["libtriton_sha256"]
    theirs = hashlib.sha256(Path(libtriton).read_bytes()).hexdigest()
    key = tc.triton_key()
    assert ours in key, "triton_key() no longer holds libtriton's hash: re-read triton/runtime/cache.py"
    real, tc.triton_key = tc.triton_key, lambda: key.replace(ours, theirs)
    try:
        yield theirs
    finally:
        tc.triton_key = real


def _base32(h: str) -> str:
    from triton.runtime.cache import _base32 as b32

    return b32(h)


def compile_variants(variants: list[dict], cache_dir: str | Path, arch: int = 90, libtriton: str | None = None,
                     log=print) -> dict:
    """Compile every variant for sm_<arch> into ``cache_dir``; write and return its manifest. With
    ``libtriton``, keys are those of a Triton built with that ``libtriton.so`` (see :func:`keyed_as`)."""
    import triton

    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    triton.knobs.cache.dir = str(cache_dir)
    kernels = load_kernels()
    entries = []
    with offline_target(arch), keyed_as(libtriton) as lib_hash:
        for v in variants:
            fn = getattr(kernels, v["kernel"])
            args = mock_args(v["args"])
            t0 = time.perf_counter()
            k = fn.warmup(*args, grid=(1,), **v["meta"])
            took = time.perf_counter() - t0
            key, parts = runtime_key(fn, args, v["meta"])
            if key != k.hash:
                raise RuntimeError(f"key mirror disagrees with triton.compile for {v['kernel']}: {key} != {k.hash}")
            d = cache_dir / _base32(k.hash)
            entries.append({**v, "hash": k.hash, "dir": d.name, "files": sorted(p.name for p in d.iterdir()),
                            "name": k.src.name, "compile_s": round(took, 2), "parts": parts})
            log(f"{v['kernel']} {_short_meta(v['meta'])}: {took:.1f} s, key {k.hash[:12]}")
        parts = triton_key_parts()
    if lib_hash:
        parts["libtriton_sha256"] = lib_hash
    manifest = {"created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "arch": arch, **parts,
                "kernels_sha256": hashlib.sha256(KERNELS_PY.read_bytes()).hexdigest(), "variants": entries}
    (cache_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _short_meta(meta: dict) -> str:
    return " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in meta.items())


def install(src_dir: str | Path, dst_dir: str | Path, offline_arch: int | None = None, log=print) -> dict:
    """On the device: put each compiled variant of ``src_dir`` under the key this machine's Triton
    computes, in ``dst_dir`` (its TRITON_CACHE_DIR), with group files holding this machine's paths.
    ``offline_arch``: compute the keys for that sm_<arch> with no GPU (to test the move here)."""
    import triton

    src_dir, dst_dir = Path(src_dir).resolve(), Path(dst_dir).resolve()
    manifest = json.loads((src_dir / "manifest.json").read_text())
    here = triton_key_parts()
    dst_dir.mkdir(parents=True, exist_ok=True)
    triton.knobs.cache.dir = str(dst_dir)
    kernels = load_kernels()
    same = moved = 0
    stale = hashlib.sha256(KERNELS_PY.read_bytes()).hexdigest() != manifest["kernels_sha256"]
    diffs: set[str] = set()
    target = offline_target(offline_arch) if offline_arch else contextlib.nullcontext()
    keys = []
    with target:
        for v in manifest["variants"]:
            keys.append(runtime_key(getattr(kernels, v["kernel"]), mock_args(v["args"]), v["meta"]))
    for v, (key, parts) in zip(manifest["variants"], keys, strict=True):
        if key == v["hash"]:
            same += 1
        else:
            diffs.update(k for k in parts if parts[k] != v["parts"].get(k))
        out = dst_dir / _base32(key)
        out.mkdir(parents=True, exist_ok=True)
        group = {}
        for name in v["files"]:
            if name.startswith("__grp__"):
                continue
            shutil.copyfile(src_dir / v["dir"] / name, out / name)
            group[name] = str(out / name)
        (out / f"__grp__{v['name']}.json").write_text(json.dumps({"child_paths": group}))
        moved += 1
    shutil.copyfile(src_dir / "manifest.json", dst_dir / "manifest.json")
    if here["triton_key"] != manifest["triton_key"]:
        diffs.add("triton_key" + (" (libtriton.so differs)" if here["libtriton_sha256"] != manifest["libtriton_sha256"]
                                  else " (Triton's Python files differ)"))
    report = {"installed": moved, "same_key": same, "differs_in": sorted(diffs), "stale_source": stale,
              "aot_triton": manifest["triton"], "here_triton": here["triton"]}
    log(f"triton_aot install: {moved} variants into {dst_dir}; key equal to the AOT build's for {same}/{moved}"
        + (f"; differs in {sorted(diffs)}" if diffs else "")
        + ("; WARNING triton_kernels.py changed since the AOT build: expect compiles" if stale else ""))
    return report


def bundle(src_dir: str | Path, out_dir: str | Path, keep: tuple[str, ...] = (".cubin", ".json")) -> int:
    """Copy a compiled cache's binaries and metadata (all a cache hit reads, as in Triton's
    ``TRITON_STORE_BINARY_ONLY`` mode) and its manifest into ``out_dir``, to travel; returns bytes."""
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    manifest = json.loads((src_dir / "manifest.json").read_text())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    total = 0
    for v in manifest["variants"]:
        (out_dir / v["dir"]).mkdir(parents=True, exist_ok=True)
        v["files"] = [f for f in v["files"] if f.endswith(keep) and not f.startswith("__grp__")]
        for f in v["files"]:
            shutil.copyfile(src_dir / v["dir"] / f, out_dir / v["dir"] / f)
            total += (out_dir / v["dir"] / f).stat().st_size
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return total


class CompileWatch:
    """Records every ``triton.compile`` call (one per new kernel variant in a process) with whether it was
    a cache hit and how long it took; :meth:`summary` is one line per kernel."""

    def __init__(self):
        self.events: list[tuple[str, bool, float, str]] = []

    def __call__(self, *, src, metadata, metadata_group, times, cache_hit):
        meta = {k: metadata.get(k) for k in ("num_warps", "num_stages")}
        consts = getattr(src, "constants", {})
        name = getattr(src, "name", "?")
        self.events.append((name, bool(cache_hit), float(getattr(times, "total", 0.0) or 0.0),
                            f"{meta} {sorted(consts.items())}"))

    def summary(self) -> str:
        n, hits = len(self.events), sum(e[1] for e in self.events)
        lines = [f"triton kernels loaded: {n}, from the cache: {hits}, compiled: {n - hits}"]
        for name, hit, secs, what in self.events:
            lines.append(f"  {'cache' if hit else 'COMPILED'} {name} {secs:.2f} s {what}")
        return "\n".join(lines)


@contextlib.contextmanager
def watch():
    """``with watch() as w: ...; print(w.summary())``: which kernels came from the cache."""
    import triton

    w = CompileWatch()
    old = triton.knobs.compilation.listener
    triton.knobs.compilation.listener = w
    try:
        yield w
    finally:
        triton.knobs.compilation.listener = old


def probe(cache_dir: str | Path, offline_arch: int | None = None) -> list[tuple[str, bool]]:
    """Load every variant of a manifest through the JIT (``warmup``, no launch) from ``cache_dir``, the
    cache :func:`install` filled: ``[(kernel, came from the cache)]``. Compiles what it misses."""
    import triton

    manifest = json.loads((Path(cache_dir) / "manifest.json").read_text())
    triton.knobs.cache.dir = str(Path(cache_dir).resolve())
    kernels = load_kernels()
    target = offline_target(offline_arch) if offline_arch else contextlib.nullcontext()
    out = []
    with target, watch() as w:
        for v in manifest["variants"]:
            n = len(w.events)
            getattr(kernels, v["kernel"]).warmup(*mock_args(v["args"]), grid=(1,), **v["meta"])
            out.append((v["kernel"], all(e[1] for e in w.events[n:])))
    return out


def count_cubins(cache_dir: str | Path) -> int:
    """Compiled kernels in a cache folder (a stage that adds some compiled them)."""
    return sum(1 for _ in Path(cache_dir).glob("*/*.cubin"))


# ----------------------------------------------------------------------------------------------------
# Reading the compiled code (no GPU): resources and SASS per variant
# ----------------------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def static_report(cache_dir: str | Path) -> list[dict]:
    """Registers, spills, shared memory and instruction counts of every variant in a manifest, read
    from its cubin with the cuobjdump/nvdisasm that ship in Triton's package, and from its TTGIR."""
    cache_dir = Path(cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    rows = []
    for v in manifest["variants"]:
        d = cache_dir / v["dir"]
        cubin = d / f"{v['name']}.cubin"
        res = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                             text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "--dump-sass", str(cubin)], capture_output=True, text=True).stdout
        ttgir = (d / f"{v['name']}.ttgir").read_text()
        meta = json.loads((d / f"{v['name']}.json").read_text())
        names = getattr(load_kernels(), v["kernel"]).arg_names
        du, dv = (v["args"][names.index(n)][1].replace("torch.", "").replace("float", "fp").replace("bfp", "bf")
                  for n in ("p_U", "p_v"))
        dtype = du if dv == "fp32" else f"{du}, v {dv}"  # U's dtype, and v's when not fp32
        rows.append({"kernel": v["kernel"], "meta": v["meta"], "dtype": dtype,
                     **_resources(res), "shared": meta.get("shared"), **sass_counts(sass),
                     "async_copies": ttgir.count("async_copy_global_to_local"),
                     "ttgir_loads": ttgir.count("tt.load")})
    return rows


def _resources(text: str) -> dict:
    import re

    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    return dict(zip(("regs", "stack", "shared_static", "local"), map(int, m.groups()), strict=True)) if m else {}


def sass_counts(sass: str) -> dict:
    """Whole-kernel and innermost-loop instruction counts of a cuobjdump SASS listing.

    The loop is the body between the last backward branch and its target (the time loop: the compiler
    emits the time loop as the last backward branch when T is unrolled)."""
    import re

    ins = []
    for line in sass.splitlines():
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
        if m:
            ins.append((int(m.group(1), 16), m.group(2).strip()))
    addr = {a: i for i, (a, _) in enumerate(ins)}
    loops = []
    for i, (a, text) in enumerate(ins):
        t = re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", text)
        if t and int(t.group(1), 16) < a and int(t.group(1), 16) in addr:  # not the BRA-to-self after EXIT
            loops.append((addr[int(t.group(1), 16)], i))
    body = ins[loops[-1][0]:loops[-1][1] + 1] if loops else []

    def count(rows, pat):
        return sum(1 for _, t in rows if re.search(pat, t))

    return {"sass": len(ins), "loop": len(body), "loop_ldg": count(body, r"\bLDG\."), "loop_stg": count(body, r"\bSTG"),
            "loop_ldgsts": count(body, r"\bLDGSTS\b"), "loop_mufu": count(body, r"\bMUFU"),
            "loop_sel": count(body, r"\b(F?SEL|FSETP|ISETP)\b"), "loop_lds": count(body, r"\bLDS"),
            "ldl_stl": count(ins, r"\b(LDL|STL)\b")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compile", help="compile the variants of a JSON list for sm_<arch> (no GPU needed)")
    c.add_argument("variants")
    c.add_argument("--cache-dir", required=True)
    c.add_argument("--arch", type=int, default=90)
    c.add_argument("--libtriton", help="key as a Triton with this libtriton.so (the device's Python's wheel)")
    i = sub.add_parser("install", help="on the device: re-key a compiled cache for this machine's Triton")
    i.add_argument("--cache-dir", required=True)
    i.add_argument("--to", required=True)
    i.add_argument("--offline-arch", type=int, help="no GPU here: key for this sm_<arch> (a dry run)")
    b = sub.add_parser("probe", help="load every variant of a manifest from a cache; say which were hits")
    b.add_argument("--cache-dir", required=True)
    b.add_argument("--offline-arch", type=int)
    s = sub.add_parser("static", help="registers, spills and SASS counts of every compiled variant (JSON)")
    s.add_argument("--cache-dir", required=True)
    a = p.parse_args(argv)
    if a.cmd == "compile":
        compile_variants(json.loads(Path(a.variants).read_text()), a.cache_dir, a.arch, a.libtriton)
    elif a.cmd == "install":
        report = install(a.cache_dir, a.to, a.offline_arch)
        return 0 if report["installed"] else 1
    elif a.cmd == "probe":
        hits = probe(a.cache_dir, a.offline_arch)
        print(json.dumps({"variants": len(hits), "hits": sum(h for _, h in hits)}))
        return 0 if all(h for _, h in hits) else 1
    else:
        print(json.dumps(static_report(a.cache_dir), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
