"""Find the files of a training corpus and read them as raw bytes.

A corpus is named by a directory (walked recursively), a glob pattern, or an
explicit list of files. Members compressed with gzip, xz or zstd are read
transparently, so a log archive can be trained on as it sits on disk.

Files that would silently poison training are not mixed in but reported:
hidden files and folders (``.git/``, editor swap files), empty files, files
that look binary, and files that cannot be read or decompressed. Each comes
back in ``Corpus.skipped`` with its reason, for the CLI to show.

Nothing here knows about tokens, the model or the coder.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import io
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tinyzip.errors import UsageError

#: Compressed-member suffix -> codec name. Only the last suffix counts, so
#: ``app.log.2016-12-19`` is plain text and ``app.log.gz`` is gzip.
CODECS: dict[str, str] = {
    ".gz": "gzip", ".xz": "xz", ".lzma": "xz", ".zst": "zstd", ".bz2": "bzip2",
}

#: How much of each (decompressed) file the binary sniffer looks at.
SNIFF_BYTES = 8192

#: Above this share of control bytes a file counts as binary. Text logs have
#: tabs, newlines and the odd ANSI escape, far below a tenth.
MAX_CONTROL_FRACTION = 0.10

# Control bytes that text legitimately contains: \t \n \v \f \r and ESC (ANSI colours).
_TEXT_CONTROLS = frozenset(b"\t\n\x0b\x0c\r\x1b")
_CONTROL_BYTES = frozenset(b for b in range(32) if b not in _TEXT_CONTROLS) | {0x7F}

_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus, read as raw (decompressed) bytes."""

    path: Path
    """Absolute path on disk."""
    rel: str
    """Name relative to the corpus root, with ``/`` separators; what summaries and splits use."""
    disk_bytes: int
    """Size on disk (compressed size for compressed members)."""
    codec: str | None
    """``gzip``, ``xz``, ``zstd``, ``bzip2``, or None for a plain file."""

    def open(self) -> IO[bytes]:
        """A binary stream of the decompressed content."""
        if self.codec is None:
            return open(self.path, "rb")
        if self.codec == "gzip":
            return gzip.open(self.path, "rb")  # type: ignore[return-value]
        if self.codec == "xz":
            return lzma.open(self.path, "rb")
        if self.codec == "bzip2":
            return bz2.open(self.path, "rb")
        if self.codec == "zstd":
            import zstandard

            raw = open(self.path, "rb")
            # read_across_frames: a .zst made by concatenating frames is one member, as with gzip.
            reader = zstandard.ZstdDecompressor().stream_reader(
                raw, read_across_frames=True, closefd=True
            )
            return io.BufferedReader(reader)
        raise UsageError(f"unknown codec {self.codec!r} for {self.path}")

    def iter_blocks(self, block_bytes: int = _READ_BLOCK) -> Iterator[bytes]:
        """The decompressed content in blocks of at most ``block_bytes``, streaming."""
        with self.open() as f:
            while True:
                block = f.read(block_bytes)
                if not block:
                    return
                yield block

    def read_bytes(self) -> bytes:
        """The whole decompressed content (small files and tests only)."""
        with self.open() as f:
            return f.read()

    def raw_bytes(self) -> int:
        """Decompressed size: a stat for plain files, a streaming pass for compressed ones."""
        if self.codec is None:
            return self.path.stat().st_size
        return sum(len(b) for b in self.iter_blocks())


@dataclass(frozen=True)
class SkippedFile:
    """A file found but not used, and why."""

    rel: str
    """Name relative to the corpus root."""
    reason: str
    """Short reason: ``hidden``, ``empty``, ``binary (...)``, ``unreadable (...)``."""


@dataclass(frozen=True)
class CorpusSummary:
    """What a checkpoint records about the corpus it was trained on."""

    source: str
    """The directory, glob or file list as given."""
    n_files: int
    """Number of files used."""
    disk_bytes: int
    """Total size on disk of the files used."""
    files_sha256: str
    """SHA-256 of the sorted relative file names joined by newlines: same list, same hash."""
    n_skipped: int
    """Number of files found but not used."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "n_files": self.n_files,
            "disk_bytes": self.disk_bytes,
            "files_sha256": self.files_sha256,
            "n_skipped": self.n_skipped,
        }


@dataclass(frozen=True)
class Corpus:
    """The files to train on (sorted by relative name) and those left out."""

    source: str
    """The directory, glob or file list as given."""
    files: tuple[CorpusFile, ...]
    """Files used, sorted by ``rel`` so every listing order gives the same corpus."""
    skipped: tuple[SkippedFile, ...]
    """Files found but not used, with the reason."""

    def summary(self) -> CorpusSummary:
        names = "\n".join(sorted(f.rel for f in self.files)).encode("utf-8", "surrogateescape")
        return CorpusSummary(
            source=self.source,
            n_files=len(self.files),
            disk_bytes=sum(f.disk_bytes for f in self.files),
            files_sha256=hashlib.sha256(names).hexdigest(),
            n_skipped=len(self.skipped),
        )

    def fingerprint(self) -> str:
        """SHA-256 over names, sizes and mtimes: changes when any file changes (cache key)."""
        h = hashlib.sha256()
        for f in self.files:
            st = f.path.stat()
            line = f"{f.rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
            h.update(line.encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def find_corpus(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    include_hidden: bool = False,
) -> Corpus:
    """Find corpus files from a directory, a glob pattern, a file, or a list of those.

    Names (``CorpusFile.rel``) are relative to the directory, the folder part of
    the glob, the file's folder, or for a list the common folder of its items.
    Raises ``UsageError`` (one line) when a source does not exist or none yields a
    usable file.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise UsageError("no corpus given")
    found = [_find_one(os.fspath(item), include_hidden) for item in items]
    roots = [str(root) for root, _ in found]
    root = Path(roots[0]) if len(roots) == 1 else Path(os.path.commonpath(roots))
    label = ",".join(os.fspath(item) for item in items)

    files: list[CorpusFile] = []
    skipped: list[SkippedFile] = []
    seen: set[Path] = set()
    for _, candidates in found:
        for path, hidden_dir in candidates:
            if path in seen:
                continue
            seen.add(path)
            rel = _rel(path, root)
            if hidden_dir:
                skipped.append(SkippedFile(rel=rel + "/", reason="hidden"))
                continue
            if not include_hidden and any(part.startswith(".") for part in rel.split("/")):
                skipped.append(SkippedFile(rel=rel, reason="hidden"))
                continue
            f = CorpusFile(path=path, rel=rel, disk_bytes=path.stat().st_size,
                           codec=CODECS.get(path.suffix.lower()))
            reason = _check(f)
            if reason is None:
                files.append(f)
            else:
                skipped.append(SkippedFile(rel=rel, reason=reason))

    files.sort(key=lambda f: f.rel)
    if not files:
        why = f" ({len(skipped)} skipped: {_skip_digest(skipped)})" if skipped else ""
        raise UsageError(f"no usable corpus files in {label}{why}")
    return Corpus(source=label, files=tuple(files), skipped=tuple(skipped))


def _find_one(text: str, include_hidden: bool) -> tuple[Path, list[tuple[Path, bool]]]:
    """(root, [(absolute path, is a hidden folder reported whole)]) for one source."""
    if os.path.isdir(text):
        root = Path(text).resolve()
        return root, _walk(root, include_hidden)
    if glob.has_magic(text):
        # Wildcards never match dot-names in glob: hidden files come in by explicit name only.
        paths = [Path(p).resolve() for p in sorted(glob.glob(text, recursive=True))]
        return _glob_root(text), [(p, False) for p in paths if p.is_file()]
    if os.path.isfile(text):
        p = Path(text).resolve()
        return p.parent, [(p, False)]
    raise UsageError(f"corpus not found: {text}")


def _walk(root: Path, include_hidden: bool) -> list[tuple[Path, bool]]:
    out: list[tuple[Path, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if not include_hidden:
            # A hidden folder (.git, .cache) is reported once, not walked: it can hold
            # thousands of files that are never corpus.
            out.extend((here / d, True) for d in sorted(dirnames) if d.startswith("."))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        else:
            dirnames.sort()
        for name in sorted(filenames):
            p = here / name
            if p.is_file():
                out.append((p, False))
    return out


def _glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard: what names are relative to."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed).resolve() if fixed else Path(".").resolve()


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _check(f: CorpusFile) -> str | None:
    """None if the file is usable text, else the reason it is skipped."""
    try:
        with f.open() as stream:
            head = stream.read(SNIFF_BYTES)
    # Broad on purpose: gzip, lzma, bz2 and zstandard each raise their own error types
    # for a damaged member, and any of them means "cannot train on this file".
    except Exception as e:
        return f"unreadable ({type(e).__name__}: {e})"
    if not head:
        return "empty"
    if 0 in head:
        return "binary (NUL bytes)"
    n_control = sum(1 for b in head if b in _CONTROL_BYTES)
    if n_control > MAX_CONTROL_FRACTION * len(head):
        return f"binary ({n_control}/{len(head)} control bytes)"
    return None


def _skip_digest(skipped: Sequence[SkippedFile], limit: int = 3) -> str:
    shown = ", ".join(f"{s.rel}: {s.reason}" for s in skipped[:limit])
    return shown + (", ..." if len(skipped) > limit else "")
