"""Flat memory-mapped token files: tokenise once, train from the page cache.

``build_token_files`` streams a split file by file, block by block, through a
tokenizer and appends the ids to ``train.bin`` / ``val.bin`` (uint16 when the
vocabulary fits, else uint32) beside a small ``index.json``; a 10 GB corpus
never sits in RAM, only one block and its tokens do (nanoGPT's prepare.py,
streamed). The index carries a key (corpus fingerprint, split config,
tokenizer table hash), so an unchanged corpus is tokenised once per run dir
and a changed one is never silently reused.

``TokenArray`` reads them back: random windows of T+1 tokens for training,
and a deterministic sequential pass for validation that covers every token
once (so bits per byte can be computed over the exact validation bytes).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tinyzip.data.corpus import Corpus
from tinyzip.data.split import Segment, Split
from tinyzip.data.tokenizer import Tokenizer

from tinyzip.errors import UsageError

#: Bump when the on-disk layout changes: old caches are then rebuilt, not misread.
FORMAT_VERSION = 1
INDEX_NAME = "index.json"


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """Smallest unsigned dtype holding every id: uint16 up to 65536 symbols."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass(frozen=True)
class TokenWindow:
    """One validation chunk of the sequential pass."""

    tokens: np.ndarray
    """(T,) int64, zero-padded after the last real token."""
    n_valid: int
    """How many of the T tokens are real (T except in the last chunk)."""


class TokenArray:
    """A read-only memory-mapped token file."""

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype[Any], *,
                 n_tokens: int, n_bytes: int) -> None:
        self.path = Path(path)
        self.n_bytes = n_bytes
        """Raw bytes these tokens decode to."""
        if n_tokens == 0:
            self.tokens: np.ndarray = np.zeros(0, dtype=dtype)
        else:
            self.tokens = np.memmap(self.path, dtype=dtype, mode="r", shape=(n_tokens,))

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def sample_windows(self, rng: np.random.Generator, batch_size: int, length: int) -> np.ndarray:
        """(batch_size, length) int64 windows starting at uniform random offsets.

        Training uses ``length = T + 1``. Raises ``UsageError`` when the array is
        shorter than one window.
        """
        if len(self) < length:
            raise UsageError(
                f"training split has {len(self)} tokens, fewer than one window of {length}: "
                "use a larger corpus or a smaller --context"
            )
        starts = rng.integers(0, len(self) - length + 1, size=batch_size)
        # Fancy indexing on a memmap reads only the touched pages.
        idx = starts[:, None] + np.arange(length)[None, :]
        return np.asarray(self.tokens[idx], dtype=np.int64)

    def n_windows(self, length: int) -> int:
        """Chunks in the sequential pass: ceil(n_tokens / length)."""
        return -(-len(self) // length)

    def sequential_windows(self, length: int, *, max_windows: int | None = None
                           ) -> Iterator[TokenWindow]:
        """Chunks ``tokens[k*T : (k+1)*T]`` in order, covering every token exactly once.

        A model that starts each chunk from a begin-of-stream symbol predicts every
        token once, so summed bits over the chunks is the code length of the whole
        split, as a compressor cutting streams of T tokens would get. The last chunk
        is zero-padded (see ``n_valid``). With ``max_windows``, an evenly spaced
        deterministic subset of chunks: a huge validation split then costs bounded
        time, the same chunks every time.
        """
        n = self.n_windows(length)
        ks: Iterable[int] = range(n)
        if max_windows is not None and n > max_windows:
            ks = np.unique(np.linspace(0, n - 1, max_windows).round().astype(np.int64)).tolist()
        for k in ks:
            chunk = np.asarray(self.tokens[k * length: (k + 1) * length], dtype=np.int64)
            n_valid = len(chunk)
            if n_valid < length:
                chunk = np.concatenate([chunk, np.zeros(length - n_valid, dtype=np.int64)])
            yield TokenWindow(tokens=chunk, n_valid=n_valid)


@dataclass(frozen=True)
class TokenStore:
    """Train and validation token files of one run, plus their index."""

    root: Path
    """The folder holding ``train.bin``, ``val.bin`` and ``index.json``."""
    train: TokenArray
    """Training tokens."""
    val: TokenArray
    """Validation tokens."""
    index: dict[str, Any]
    """The parsed ``index.json``."""

    @property
    def vocab_size(self) -> int:
        return int(self.index["vocab_size"])

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> TokenStore:
        root = Path(root)
        try:
            index = json.loads((root / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"no token index in {root}: {e}") from None
        dtype = np.dtype(index["dtype"])
        arrays = {
            name: TokenArray(root / s["file"], dtype, n_tokens=s["n_tokens"], n_bytes=s["n_bytes"])
            for name, s in index["splits"].items()
        }
        return cls(root=root, train=arrays["train"], val=arrays["val"], index=index)


def cache_key(corpus: Corpus, split: Split, tokenizer: Tokenizer) -> str:
    """What the token files depend on; equal keys mean the files can be reused."""
    spec = {
        "format": FORMAT_VERSION,
        "corpus": corpus.fingerprint(),
        "split": split.config.to_dict(),
        "tokenizer": tokenizer.fingerprint(),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def build_token_files(
    corpus: Corpus,
    split: Split,
    tokenizer: Tokenizer,
    root: str | os.PathLike[str],
    *,
    block_bytes: int = 1 << 20,
    log: Callable[[str], None] | None = None,
) -> TokenStore:
    """Tokenise ``split`` into ``root`` (reusing files already built for the same key)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(corpus, split, tokenizer)
    index_path = root / INDEX_NAME
    if index_path.exists():
        try:
            old = json.loads(index_path.read_text(encoding="utf-8"))
        except ValueError:
            old = {}
        if old.get("key") == key:
            return TokenStore.open(root)
        index_path.unlink()  # stale: the .bin files are rewritten below

    dtype = token_dtype(tokenizer.vocab_size)
    splits: dict[str, Any] = {}
    for name, segments in (("train", split.train), ("val", split.val)):
        path = root / f"{name}.bin"
        tmp = path.with_name(path.name + ".tmp")
        n_tokens = n_bytes = 0
        with open(tmp, "wb") as out:
            for seg in segments:
                if log is not None:
                    log(f"tokenising {name}: {seg.file.rel} [{seg.start}:{seg.stop}]")
                for piece in _line_pieces(seg, block_bytes):
                    ids = tokenizer.encode(piece)
                    out.write(ids.astype(dtype).tobytes())
                    n_tokens += len(ids)
                    n_bytes += len(piece)
        os.replace(tmp, path)
        splits[name] = {"file": path.name, "n_tokens": n_tokens, "n_bytes": n_bytes,
                        "n_segments": len(segments)}

    index = {
        "format": FORMAT_VERSION,
        "key": key,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "tokenizer": tokenizer.kind,
        "tokenizer_sha256": tokenizer.fingerprint(),
        "corpus": corpus.summary().to_dict(),
        "split": split.config.to_dict(),
        "splits": splits,
    }
    tmp_index = index_path.with_name(INDEX_NAME + ".tmp")
    tmp_index.write_text(json.dumps(index, indent=1), encoding="utf-8")
    os.replace(tmp_index, index_path)  # written last: its presence means the .bin files are whole
    return TokenStore.open(root)


def _line_pieces(seg: Segment, block_bytes: int) -> Iterator[bytes]:
    """The segment in pieces of about ``block_bytes`` that end after a newline where possible.

    BPE pieces never span a cut, so cutting mid-word would tokenise differently
    from the whole text; cutting after a newline keeps that effect negligible.
    """
    carry = b""
    try:
        for block in seg.iter_blocks(block_bytes):
            buf = carry + block
            cut = buf.rfind(b"\n") + 1
            if cut == 0:
                # No newline in a whole block (binary-ish or one huge line): cut anyway,
                # memory stays bounded.
                cut = len(buf) if len(buf) >= block_bytes else 0
            if cut:
                yield buf[:cut]
            carry = buf[cut:]
    except Exception as e:  # a member damaged past the sniffed head: gzip/lzma/zstd errors
        raise UsageError(f"cannot read corpus file {seg.file.rel}: {type(e).__name__}: {e}") from e
    if carry:
        yield carry
