"""Deterministic train/validation split of a corpus.

Two ways to hold text out, combinable:

- the tail ``val_fraction`` of every file goes to validation. Logs drift over
  time, so the tail of a file is a fairer test of "the next day's logs" than
  random lines, and every file's format is represented on both sides;
- files matching a ``holdout`` glob go to validation whole: a way to measure
  how the model does on a system it never saw.

The split is a pure function of (file names, decompressed sizes, config): no
randomness, so a resumed run and a rebuilt token cache see the same bytes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tinyzip.data.corpus import Corpus, CorpusFile

from tinyzip.errors import UsageError


@dataclass(frozen=True)
class SplitConfig:
    """How validation text is chosen."""

    val_fraction: float = 0.05
    """Share of each (non-held-out) file, taken from its end, used for validation."""
    holdout: tuple[str, ...] = ()
    """Glob patterns; a file whose relative path or base name matches goes to validation whole."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def is_held_out(self, rel: str) -> bool:
        base = rel.rsplit("/", 1)[-1]
        return any(fnmatch.fnmatchcase(rel, g) or fnmatch.fnmatchcase(base, g)
                   for g in self.holdout)

    def to_dict(self) -> dict[str, Any]:
        return {"val_fraction": self.val_fraction, "holdout": list(self.holdout)}


@dataclass(frozen=True)
class Segment:
    """A byte range ``[start, stop)`` of one file's decompressed content."""

    file: CorpusFile
    """The file the bytes come from."""
    start: int
    """First byte offset, inclusive."""
    stop: int
    """Last byte offset, exclusive."""

    @property
    def n_bytes(self) -> int:
        return self.stop - self.start

    def iter_blocks(
        self, block_bytes: int = 1 << 20, *, limit: int | None = None
    ) -> Iterator[bytes]:
        """The segment's bytes in blocks, streaming (at most ``limit`` bytes if given)."""
        stop = self.stop if limit is None else min(self.stop, self.start + limit)
        pos = 0
        for block in self.file.iter_blocks(block_bytes):
            end = pos + len(block)
            if end > self.start and pos < stop:
                yield block[max(self.start - pos, 0): stop - pos]
            if end >= stop:
                return
            pos = end


@dataclass(frozen=True)
class Split:
    """Segments for training and for validation, in corpus (sorted name) order."""

    train: tuple[Segment, ...]
    """What the model learns from."""
    val: tuple[Segment, ...]
    """What validation bpb is measured on."""
    config: SplitConfig = field(default_factory=SplitConfig)
    """The config that produced this split."""

    @property
    def train_bytes(self) -> int:
        return sum(s.n_bytes for s in self.train)

    @property
    def val_bytes(self) -> int:
        return sum(s.n_bytes for s in self.val)


def split_corpus(
    corpus: Corpus,
    config: SplitConfig = SplitConfig(),
    *,
    raw_sizes: Sequence[int] | None = None,
) -> Split:
    """Split every file of ``corpus`` into a train head and a validation tail.

    ``raw_sizes`` (decompressed size per file, in ``corpus.files`` order) saves a
    decompression pass when the caller already knows them.
    Raises ``UsageError`` if either side ends up empty.
    """
    if raw_sizes is None:
        raw_sizes = [f.raw_bytes() for f in corpus.files]
    if len(raw_sizes) != len(corpus.files):
        raise ValueError("raw_sizes must have one entry per corpus file")
    train: list[Segment] = []
    val: list[Segment] = []
    for f, size in zip(corpus.files, raw_sizes, strict=True):
        if config.is_held_out(f.rel):
            val.append(Segment(f, 0, size))
            continue
        # floor: a file too small for a whole validation byte stays entirely in training.
        cut = size - int(size * config.val_fraction)
        if cut > 0:
            train.append(Segment(f, 0, cut))
        if cut < size:
            val.append(Segment(f, cut, size))
    if not train:
        raise UsageError(f"training split is empty: every file of {corpus.source} is held out")
    if not val:
        raise UsageError(
            f"validation split is empty: raise --val-fraction (now {config.val_fraction}) "
            "or add --holdout"
        )
    return Split(train=tuple(train), val=tuple(val), config=config)


def sample_blocks(
    segments: Iterable[Segment], *, max_bytes: int, block_bytes: int = 1 << 20
) -> Iterator[bytes]:
    """At most ``max_bytes`` from ``segments``, each giving a share proportional to its size.

    For learning BPE merges: every file's format is represented, and a 10 GB
    corpus costs a bounded, deterministic sample (each share from its segment's start).
    """
    segs = list(segments)
    total = sum(s.n_bytes for s in segs)
    if total == 0:
        return
    for s in segs:
        share = s.n_bytes if total <= max_bytes else max(1, s.n_bytes * max_bytes // total)
        yield from s.iter_blocks(block_bytes, limit=share)
