"""Byte and byte-level BPE tokenizers that round-trip any byte string.

``ByteTokenizer`` maps each byte to itself (256 symbols) and needs nothing.

``BpeTokenizer`` is trained with the ``tokenizers`` library on *raw bytes*,
not on text. Rust strings must be valid UTF-8, so arbitrary log bytes cannot
be handed over as a Python ``str`` (surrogate escapes are rejected). Instead
each byte is mapped to one character by our own table (``BYTE_TO_CHAR``,
GPT-2's ``bytes_to_unicode`` idea), and the library only ever sees those
characters. Consequences, all deliberate:

- the pre-tokenizer is a ``Split(Regex(...))`` written over the mapped
  characters; the stock ``ByteLevel`` pre-tokenizer would map them again;
- decoding never calls ``tokenizer.decode``: ids go through our own
  id -> bytes table (``id_to_bytes()``), which is also what a checkpoint
  stores, so the decoder needs neither ``tokenizers`` nor this module;
- every one of the 256 mapped characters is in the initial alphabet, so
  encoding never meets an unknown symbol, whatever the input.

``tokenizers`` is imported lazily: the byte tokenizer and loading a table
work without it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tinyzip.errors import UsageError

MIN_BPE_VOCAB = 512
MAX_BPE_VOCAB = 8192


def _byte_to_char_table() -> list[str]:
    """Byte -> one printable character.

    Printable ASCII (0x21..0x7E) maps to itself so vocabularies stay readable;
    every other byte b maps to U+0100 + b (space -> 'Ġ', newline -> 'Ċ', as in
    GPT-2, and 0x80..0xFF -> U+0180..U+01FF). All targets are single code
    points outside the surrogate range, so any byte string maps to valid UTF-8.
    """
    return [chr(b) if 0x21 <= b <= 0x7E else chr(0x100 + b) for b in range(256)]


BYTE_TO_CHAR: list[str] = _byte_to_char_table()
#: Name of this mapping in checkpoint metadata: a different table is a different tokenizer.
BYTE_MAP_NAME = "tinyzip-bytes-v1"
CHAR_TO_BYTE: dict[str, int] = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
# Code point of each byte's character, for the vectorised mapping in bytes_to_text.
_BYTE_TO_CODEPOINT = np.array([ord(c) for c in BYTE_TO_CHAR], dtype=np.uint32)


def _c(b: int) -> str:
    return BYTE_TO_CHAR[b]


# Character classes over the *mapped* characters.
# letters: ASCII letters plus every byte >= 0x80 (UTF-8 lead/continuation bytes), so
# "naïve" or a CJK word stays one piece;
_LETTERS = f"A-Za-z{_c(0x80)}-{_c(0xFF)}"
# whitespace and control bytes: 0x00..0x20 and DEL;
_SPACES = f"{_c(0x00)}-{_c(0x20)}{_c(0x7F)}"
_SP = _c(0x20)
_PUNCT = "!-/:-@\\[-`{-~"  # ASCII punctuation: 0x21..0x2F, 0x3A..0x40, 0x5B..0x60, 0x7B..0x7E
#: Split pattern in the spirit of GPT-2's: an optional leading space glued to a
#: word, a number or a punctuation run; whitespace runs on their own. Only
#: positive classes and no look-ahead: Oniguruma runs this ~1.5x faster than
#: GPT-2's negated classes with ``\s+(?!\S)`` (measured ~1 MB/s on 2 shared cores).
PRETOKENIZE_PATTERN = (
    f"{_SP}?[{_LETTERS}]+"
    f"|{_SP}?[0-9]+"
    f"|{_SP}?[{_PUNCT}]+"
    f"|[{_SPACES}]+"
)


def bytes_to_text(data: bytes) -> str:
    """Map raw bytes to the character string the ``tokenizers`` library sees (one char per byte)."""
    codepoints = _BYTE_TO_CODEPOINT[np.frombuffer(data, dtype=np.uint8)]
    return codepoints.astype("<u4").tobytes().decode("utf-32-le")


def text_to_bytes(text: str) -> bytes:
    """Inverse of ``bytes_to_text``."""
    return bytes(CHAR_TO_BYTE[c] for c in text)


#: Inputs longer than this are encoded as pieces of about this size (see ``safe_cuts``).
ENCODE_PIECE_BYTES = 1 << 16


def safe_cuts(data: bytes, piece_bytes: int) -> list[int]:
    """Offsets, about ``piece_bytes`` apart, where cutting cannot change a BPE encoding.

    A position right after a newline and before a non-whitespace byte is always a
    pre-token boundary of ``PRETOKENIZE_PATTERN``: the whitespace run ends there, and
    only a space (never a newline) may open the next piece. Merges never cross
    pre-token boundaries, so encoding the parts separately gives the same ids.
    """
    if len(data) <= piece_bytes:
        return []
    arr = np.frombuffer(data, dtype=np.uint8)
    after_nl = np.flatnonzero(arr[:-1] == 0x0A) + 1
    nxt = arr[after_nl]
    ok = after_nl[(nxt > 0x20) & (nxt != 0x7F)]
    if len(ok) == 0:
        return []
    targets = np.arange(piece_bytes, len(data), piece_bytes)
    picked = ok[np.minimum(np.searchsorted(ok, targets), len(ok) - 1)]
    return sorted({int(c) for c in picked if 0 < c < len(data)})


class Tokenizer(Protocol):
    """What training and export need from a tokenizer."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, data: bytes) -> np.ndarray: ...  # (n_tokens,) int64

    def decode(self, ids: Iterable[int] | np.ndarray) -> bytes: ...

    def id_to_bytes(self) -> list[bytes]: ...

    def to_dict(self) -> dict[str, Any]: ...

    def save(self, path: str | os.PathLike[str]) -> None: ...

    def fingerprint(self) -> str: ...


class _TableDecoder:
    """Shared by both tokenizers: decode and describe through the id -> bytes table."""

    kind: str

    def id_to_bytes(self) -> list[bytes]:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_bytes())

    def decode(self, ids: Iterable[int] | np.ndarray) -> bytes:
        table = self.id_to_bytes()
        try:
            return b"".join(table[int(i)] for i in ids)
        except IndexError:
            raise UsageError(f"token id out of range for a vocabulary of {len(table)}") from None

    def token_lengths(self) -> np.ndarray:
        """(V,) int64 bytes per token id: turns per-token bits into bits per byte."""
        return np.array([len(b) for b in self.id_to_bytes()], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON (atomically: a half-written tokenizer would poison a resumed run)."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=True), encoding="utf-8")
        os.replace(tmp, p)

    def fingerprint(self) -> str:
        """SHA-256 of the id -> bytes table: equal tables tokenise-decode identically."""
        h = hashlib.sha256()
        for b in self.id_to_bytes():
            h.update(len(b).to_bytes(4, "little"))
            h.update(b)
        return h.hexdigest()


class ByteTokenizer(_TableDecoder):
    """One token per byte, id = byte value."""

    kind = "byte"

    def __init__(self) -> None:
        self._table = [bytes([b]) for b in range(256)]

    def id_to_bytes(self) -> list[bytes]:
        return list(self._table)

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "byte", "vocab_size": 256}

    def checkpoint_spec(self) -> dict[str, Any]:
        """What a checkpoint's metadata records (the table itself is stored as tensors)."""
        return {"kind": "bytes"}


class BpeTokenizer(_TableDecoder):
    """Byte-level BPE trained on raw bytes through ``BYTE_TO_CHAR`` (see module docstring)."""

    kind = "bpe"

    def __init__(self, tokenizer_json: str) -> None:
        """Wrap a serialised ``tokenizers.Tokenizer`` (as written by ``train``)."""
        self._json = tokenizer_json
        spec = json.loads(tokenizer_json)
        vocab: dict[str, int] = spec["model"]["vocab"]
        table: list[bytes | None] = [None] * len(vocab)
        for token, i in vocab.items():
            try:
                table[i] = text_to_bytes(token)
            except (KeyError, IndexError):
                raise UsageError(f"BPE vocabulary entry {token!r} is not in the byte map") from None
        if any(t is None for t in table):
            raise UsageError("BPE vocabulary ids are not contiguous")
        self._table: list[bytes] = [t for t in table if t is not None]
        self._tok: Any = None  # the tokenizers.Tokenizer, built on first encode

    @classmethod
    def train(
        cls,
        blocks: Iterable[bytes],
        *,
        vocab_size: int,
        min_frequency: int = 2,
    ) -> BpeTokenizer:
        """Learn merges from raw byte blocks (e.g. the training split, block by block)."""
        if not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
            raise UsageError(
                f"--vocab-size must be in {MIN_BPE_VOCAB}..{MAX_BPE_VOCAB}, got {vocab_size}"
            )
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            # All 256 byte characters up front: nothing can ever be unknown.
            initial_alphabet=BYTE_TO_CHAR,
            special_tokens=[],
            show_progress=False,
        )

        def texts() -> Iterator[str]:
            for block in blocks:
                yield bytes_to_text(block)

        tok.train_from_iterator(texts(), trainer=trainer)
        out = cls(tok.to_str())
        out._tok = tok
        if len(out._table) < 256:
            raise UsageError("BPE training lost byte symbols; this is a bug")
        return out

    def id_to_bytes(self) -> list[bytes]:
        return list(self._table)

    @property
    def vocab_size(self) -> int:
        return len(self._table)

    def _tokenizer(self) -> Any:
        if self._tok is None:
            from tokenizers import Tokenizer

            self._tok = Tokenizer.from_str(self._json)
        return self._tok

    def encode(self, data: bytes) -> np.ndarray:
        if not data:
            return np.zeros(0, dtype=np.int64)
        tok = self._tokenizer()
        cuts = safe_cuts(data, ENCODE_PIECE_BYTES)
        if not cuts:
            ids = tok.encode(bytes_to_text(data), add_special_tokens=False).ids
            return np.asarray(ids, dtype=np.int64)
        # Same ids as one call (the cuts are pre-token boundaries), but the library
        # encodes the pieces on all cores and never builds one huge Encoding.
        bounds = [0, *cuts, len(data)]
        texts = [bytes_to_text(data[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        encodings = tok.encode_batch(texts, add_special_tokens=False)
        return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encodings])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bpe", "vocab_size": self.vocab_size, "tokenizer": json.loads(self._json)}

    def checkpoint_spec(self) -> dict[str, Any]:
        """What a checkpoint's metadata records beside the id -> bytes table: the merges
        and the split pattern, over ``BYTE_TO_CHAR`` characters. ``tokenizer_from_table``
        rebuilds an identical encoder from the two (the vocabulary is the table)."""
        spec = json.loads(self._json)
        return {
            "kind": "bpe",
            "byte_map": BYTE_MAP_NAME,
            "pattern": spec["pre_tokenizer"]["pattern"]["Regex"],
            "merges": [list(m) if isinstance(m, list) else m.split(" ", 1)
                       for m in spec["model"]["merges"]],
        }


def tokenizer_from_table(
    table: list[bytes] | tuple[bytes, ...], spec: dict[str, Any]
) -> ByteTokenizer | BpeTokenizer:
    """Rebuild the tokenizer of a checkpoint from its id -> bytes table and ``checkpoint_spec``."""
    kind = spec.get("kind")
    if kind in ("byte", "bytes"):
        if list(table) != ByteTokenizer().id_to_bytes():
            raise UsageError("byte tokenizer spec with a table that is not the 256 bytes")
        return ByteTokenizer()
    if kind != "bpe":
        raise UsageError(f"unknown tokenizer kind {kind!r}")
    if spec.get("byte_map") != BYTE_MAP_NAME:
        raise UsageError(f"unknown byte map {spec.get('byte_map')!r}")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {bytes_to_text(b): i for i, b in enumerate(table)}
    merges = [(a, b) for a, b in spec["merges"]]
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    except Exception as exc:  # tokenizers raises a bare Exception for inconsistent merges
        raise UsageError(f"BPE table and merges do not agree: {exc}") from None
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated")
    out = BpeTokenizer(tok.to_str())
    if out.id_to_bytes() != list(table):
        raise UsageError("BPE table and merges do not agree")
    return out


def byte_map() -> list[str]:
    """A copy of the byte -> character table (for documentation and other implementations)."""
    return list(BYTE_TO_CHAR)


def tokenizer_from_dict(spec: dict[str, Any]) -> ByteTokenizer | BpeTokenizer:
    kind = spec.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BpeTokenizer(json.dumps(spec["tokenizer"]))
    raise UsageError(f"unknown tokenizer kind {kind!r}")


def load_tokenizer(path: str | os.PathLike[str]) -> ByteTokenizer | BpeTokenizer:
    """Read a tokenizer written by ``save``."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read tokenizer {path}: {e}") from None
    return tokenizer_from_dict(spec)
