"""A disk cache of cm's state after a checkpoint's primer (model/primer.py).

Before every archive, in each direction, cm learns its checkpoint's primer: 1.1-1.4 s
with the default's 128 KiB, a quarter of the time on a 300 KB log. What it learns there
depends on the checkpoint, cm's descriptor, how much of the primer is learned
(primer.learned_part) and what is done after it (count cap, mixer kept), never on the
data. So the first archive on a machine keeps it here, and later processes load it in
about 0.13 s instead.

An entry holds the table entries that differ from cm's fresh ones (the default: 7.7 M
of 35 M, 62 MB instead of 283), and the SHA-256 of its body. An entry that is truncated,
corrupt, for other tables, from another version or owned by another user is never
loaded: cm learns the primer and the entry is written anew. Entries are written to a
temporary file and renamed into place, so a reader never sees half of one, and
concurrent writers each leave a whole one.

Where: ``$TINYZIP_CACHE_DIR``, else ``$XDG_CACHE_HOME/tinyzip``, else
``~/.cache/tinyzip``; ``TINYZIP_CACHE_DIR=off`` (or empty) turns the cache off. At most
``MAX_ENTRIES`` entries are kept, the least recently used removed first. Nothing here
can change an archive: a loaded state is the learned one, bit for bit, or it is not used.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ENV = "TINYZIP_CACHE_DIR"
#: The first bytes of an entry; a change of layout changes them.
MAGIC = b"tinyzip primed cm state 1\n"
SUFFIX = ".primed"
#: Entries kept (the default model has two: its whole primer, and the part learned
#: before inputs under 16 KB); the least recently used go first.
MAX_ENTRIES = 6
#: A temporary file older than this is a writer that died: removed on the next save.
STALE_TMP_S = 3600
_HEADER_MAX = 1 << 20
_PIECE = 1 << 22  # table entries compared at a time by differences
_U32 = np.dtype("<u4")
_I64 = np.dtype("<i8")


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off."""
    value = os.environ.get(ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "off", "0", "none") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):  # no home to expand: never a folder in the working directory
        return None
    return Path(base) / "tinyzip"


def entry_key(parts: tuple[Any, ...]) -> str:
    """The text that names one primed state: the caller's parts (bytes as hex) and the
    package version (a new release learns its states anew rather than trust old ones)."""
    from tinyzip import __version__

    items = [p.hex() if isinstance(p, bytes) else p for p in parts]
    return json.dumps([MAGIC.decode().strip(), __version__, *items], sort_keys=True)


def entry_path(key: str) -> Path | None:
    """The file of ``key``'s entry (None when the cache is off)."""
    where = cache_dir()
    if where is None:
        return None
    return where / (hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX)


#: cm's state after a primer as its differences from the fresh tables: per table, its
#: size and four lists of arrays (indices and values that fit 32 bits unsigned, then
#: indices and int64 values of the rest), the lists' pieces in order.
Entry = dict[str, tuple[int, list[np.ndarray], list[np.ndarray], list[np.ndarray],
                        list[np.ndarray]]]


def differences(tables: dict[str, np.ndarray],
                fresh: Callable[[str, int, int], np.ndarray]) -> Entry | None:  # fmt: skip
    """``tables`` (cm after the primer) as their differences from ``fresh(name, lo, hi)``,
    entries lo..hi-1 of a table as cm's reset leaves them, compared in pieces so that
    memory does not grow by a copy of the tables; None if a table is too large."""
    entry: Entry = {}
    for name in sorted(tables):
        table = tables[name]
        if table.size >= 1 << 32:
            return None
        kinds: list[list[np.ndarray]] = [[], [], [], []]
        for lo in range(0, table.size, _PIECE):
            hi = min(table.size, lo + _PIECE)
            idx = lo + np.flatnonzero(table[lo:hi] != fresh(name, lo, hi))
            values = table[idx]
            small = (values >= 0) & (values < 1 << 32)  # most: counters, non-negative
            kinds[0].append(idx[small].astype(_U32))
            kinds[1].append(values[small].astype(_U32))
            kinds[2].append(idx[~small].astype(_U32))
            kinds[3].append(values[~small].astype(_I64))
        entry[name] = (int(table.size), *kinds)
    return entry


def apply(entry: Entry, tables: dict[str, np.ndarray]) -> None:
    """Write ``entry`` into ``tables``, cm's freshly reset shared tables (in place)."""
    if sorted(entry) != sorted(tables) or any(entry[n][0] != tables[n].size for n in entry):
        raise ValueError("a primed state for other tables")
    for name, (_, idx32, val32, idx64, val64) in entry.items():
        table = tables[name]
        for idx, values in (*zip(idx32, val32), *zip(idx64, val64)):
            table[idx] = values


def load(path: Path, key: str, tables: dict[str, np.ndarray]) -> Entry | None:
    """Write ``path``'s entry into ``tables`` (cm's freshly reset shared tables, changed
    in place) and return it; None, with ``tables`` untouched, when there is no valid
    entry for ``key`` there."""
    try:
        if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
            return None  # another user's file (a shared TINYZIP_CACHE_DIR): never trusted
        blob = path.read_bytes()
    except OSError:
        return None
    entry = _parse(blob, key, tables)
    if entry is None:
        return None
    apply(entry, tables)
    try:
        os.utime(path)  # recently used: kept longest
    except OSError:
        pass
    return entry


def _parse(blob: bytes, key: str, tables: dict[str, np.ndarray]) -> Entry | None:
    """The entry in ``blob``, each array checked against ``tables``; None if anything is off."""
    n_magic = len(MAGIC)
    if len(blob) < n_magic + 8 or blob[:n_magic] != MAGIC:
        return None
    (n_header,) = struct.unpack_from("<Q", blob, n_magic)
    start = n_magic + 8 + n_header
    if n_header > _HEADER_MAX or start > len(blob):
        return None
    try:
        header = json.loads(blob[n_magic + 8 : start])
        ok = header["key"] == key and isinstance(header["arrays"], list)
        body = memoryview(blob)[start:]
        ok = ok and hashlib.sha256(body).hexdigest() == header["sha256"]
        if not ok or sorted(a[0] for a in header["arrays"]) != sorted(tables):
            return None
        entry: Entry = {}
        at = 0
        for name, size, n32, n64 in header["arrays"]:
            if size != tables[name].size or min(n32, n64) < 0:
                return None
            arrays = []
            for dtype, n in ((_U32, n32), (_U32, n32), (_U32, n64), (_I64, n64)):
                arrays.append(np.frombuffer(body, dtype=dtype, count=n, offset=at))
                at += n * dtype.itemsize
            for idx in arrays[0], arrays[2]:
                if idx.size and int(idx.max()) >= size:
                    return None
            entry[name] = (size, *([a] for a in arrays))
        return entry if at == len(body) else None
    except (ValueError, KeyError, TypeError):  # bad JSON, fields or lengths
        return None


def save(path: Path, key: str, entry: Entry) -> bool:
    """Write ``entry`` as ``key``'s to ``path``: True when written. A cache that cannot be
    written is skipped: archives do not need it."""
    header: dict[str, Any] = {"key": key, "arrays": []}
    chunks: list[np.ndarray] = []  # in file order: per table idx32, val32, idx64, val64
    for name in sorted(entry):
        size, *kinds = entry[name]
        n32, n64 = (sum(a.size for a in kinds[i]) for i in (0, 2))
        header["arrays"].append([name, size, int(n32), int(n64)])
        chunks += [a for kind in kinds for a in kind]
    digest = hashlib.sha256()
    for c in chunks:
        digest.update(c)
    header["sha256"] = digest.hexdigest()
    head = json.dumps(header).encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<Q", len(head)) + head)
                for c in chunks:
                    f.write(c.data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        _evict(path.parent)
    except OSError:
        return False
    return path.is_file()


def _evict(where: Path) -> None:
    """Keep the MAX_ENTRIES most recently used entries; drop writers' stale leftovers."""
    entries = []
    for p in where.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.suffix == SUFFIX:
            entries.append((st.st_mtime, p))
        elif p.suffix == ".tmp" and time.time() - st.st_mtime > STALE_TMP_S:
            p.unlink(missing_ok=True)
    for _, p in sorted(entries, reverse=True)[MAX_ENTRIES:]:
        p.unlink(missing_ok=True)
