"""cm's primer: a sample of the training corpus that cm learns before the data.

cm starts every archive knowing nothing, and on a small file much of what it pays goes
on learning what any log looks like (timestamps, levels, words, the mixer's trust in
each context). A checkpoint can carry a primer, one line of each kind found in the
training files (at most ``DEFAULT_PRIMER_BYTES`` in all): at ``--adapt max`` and
``fast``, cm+transformer learns it (cm's tables, mixer and APMs) before the first frame,
in the encoder and the decoder alike, then starts the data as a fresh stream
(docs/context_mix.md has the measurements).

The primer travels xz-compressed in the checkpoint (tensor ``cm.primer``), its length
and SHA-256 in the metadata, so the model stays one file and its id covers the primer.
"""

from __future__ import annotations

import argparse
import hashlib
import lzma
import re
import sys
from collections.abc import Sequence

import numpy as np

from tinyzip.data.corpus import CorpusFile, find_corpus
from tinyzip.data.split import SplitConfig

from tinyzip.errors import CheckpointError

#: What train.py puts in a checkpoint by default (0 there: none).
DEFAULT_PRIMER_BYTES = 1 << 17
#: Bound on a primer's length when reading one (a hostile checkpoint must not make a
#: decoder learn for minutes or unpack gigabytes).
MAX_PRIMER_BYTES = 1 << 22
#: build_primer: a line's template (digit runs, and hex runs of 6 or more, as one 0) and
#: the bytes of it that tell kinds of line apart; longer lines are left out.
_TEMPLATE = re.compile(rb"[0-9a-f]{6,}|[0-9]+")
TEMPLATE_BYTES = 50
MAX_LINE = 4096
#: The least of a primer learned before a short input (learned_part).
MIN_LEARNED = 1 << 16
#: The tensor that holds it, and its metadata key ({"bytes": n, "sha256": hex}).
TENSOR = "cm.primer"
META = "cm_primer"


def build_primer(files: Sequence[CorpusFile], n_bytes: int = DEFAULT_PRIMER_BYTES,
                 split: SplitConfig | None = None) -> bytes:
    """Lines of the corpus files, one of each kind, at most ``n_bytes`` in all.

    A line joins when its template is new: the line with every run of digits (and every
    run of 6 or more hex digits) as one ``0``, its first ``TEMPLATE_BYTES``. The files
    take turns, a line each, so that any prefix (``learned_part``) covers every file;
    lines longer than ``MAX_LINE`` and lines that no longer fit are left out. With a
    ``split``, only its training part is read (no held-out file, no file's tail).
    cm learns from it what lines of these systems look like, each kind once: on kafka (cm
    alone, 128 KiB of the other two sets, 80 template bytes) 77,612 -> 73,196 bytes, where
    the head of every file gave 74,308; 50 template bytes did best of 30-160 on the three
    held-out sets once cm caps its counts after the primer (docs/context_mix.md)."""
    if n_bytes <= 0 or not files:
        return b""
    train_fraction = 1.0 if split is None else 1.0 - split.val_fraction
    seen: set[bytes] = set()
    kinds: list[list[bytes]] = []
    for f in files:
        if split is not None and split.is_held_out(f.rel):
            continue
        with f.open() as fh:
            data = fh.read()
        data = data[: int(len(data) * train_fraction)]
        kept = []
        for line in data.split(b"\n")[:-1]:  # whole lines only
            key = _TEMPLATE.sub(b"0", line)[:TEMPLATE_BYTES]
            if key not in seen and len(line) < MAX_LINE:
                seen.add(key)
                kept.append(line + b"\n")
        kinds.append(kept)
    out: list[bytes] = []
    room = n_bytes
    for turn in range(max(map(len, kinds), default=0)):
        for kept in kinds:
            if turn < len(kept) and len(kept[turn]) <= room:
                out.append(kept[turn])
                room -= len(kept[turn])
        if room < 2:
            break
    return b"".join(out)


def learned_part(primer: bytes, input_bytes: int | None) -> bytes:
    """What cm learns of a primer before an input of ``input_bytes`` (None: unknown).

    All of it, unless the input is shorter than a quarter of it: then a prefix of four
    times the input's length (at least ``MIN_LEARNED``), cut after a newline, so that a
    short input does not wait for all of it: learning runs at about 100 KB/s (55 before
    the kernel's slot prefetch), and on a 12 KB kafka log a 64 KB prefix of the first
    primed default's primer gave 507 archive bytes, all of it 505."""
    if input_bytes is None or 4 * input_bytes >= len(primer):
        return primer
    n = max(MIN_LEARNED, 4 * input_bytes)
    if n >= len(primer):
        return primer
    cut = primer.rfind(b"\n", 0, n)
    return primer[: cut + 1] if cut >= 0 else primer[:n]


def pack(primer: bytes) -> tuple[np.ndarray, dict[str, object]]:
    """The checkpoint tensor (xz bytes as uint8) and metadata entry of a primer."""
    if len(primer) > MAX_PRIMER_BYTES:
        raise ValueError(f"primer of {len(primer)} bytes, at most {MAX_PRIMER_BYTES}")
    blob = lzma.compress(primer, preset=9 | lzma.PRESET_EXTREME)
    meta = {"bytes": len(primer), "sha256": hashlib.sha256(primer).hexdigest()}
    return np.frombuffer(blob, dtype=np.uint8).copy(), meta


def unpack(tensor: np.ndarray, meta: object, where: str = "checkpoint") -> bytes:
    """A checkpoint's primer, checked against its metadata; CheckpointError if bad."""
    if not isinstance(meta, dict) or not isinstance(meta.get("bytes"), int) \
            or not isinstance(meta.get("sha256"), str):
        raise CheckpointError(f"{where}: primer without its length and SHA-256 in the metadata")
    n = meta["bytes"]
    if not 0 <= n <= MAX_PRIMER_BYTES:
        raise CheckpointError(f"{where}: primer of {n} bytes, at most {MAX_PRIMER_BYTES}")
    if tensor.dtype != np.uint8 or tensor.ndim != 1:
        raise CheckpointError(f"{where}: tensor {TENSOR} must be uint8 1-D")
    try:
        unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        primer = unpacker.decompress(tensor.tobytes(), max_length=n + 1)
    except lzma.LZMAError as exc:
        raise CheckpointError(f"{where}: primer does not decompress ({exc})") from None
    if not unpacker.eof and len(primer) <= n:
        raise CheckpointError(f"{where}: primer is truncated")
    if len(primer) != n or hashlib.sha256(primer).hexdigest() != meta["sha256"]:
        raise CheckpointError(f"{where}: primer does not match its length and SHA-256")
    return primer


def main(argv: list[str] | None = None) -> int:
    """python -m tinyzip.model.primer CKPT --corpus DIR... -o OUT: a copy of a
    checkpoint with a primer built from the corpus, within the checkpoint's training split
    (its own corpus gives the primer train.py would have built)."""
    from tinyzip.model.checkpoint import load_checkpoint, save_checkpoint

    ap = argparse.ArgumentParser(prog="python -m tinyzip.model.primer", description=main.__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--corpus", action="append", required=True, help="folder or file (repeat)")
    ap.add_argument("--bytes", type=int, default=DEFAULT_PRIMER_BYTES, help="primer length bound")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    ck = load_checkpoint(args.checkpoint)
    saved = ck.meta.get("split")  # the checkpoint's own split, as train.py recorded it
    split = SplitConfig(val_fraction=float(saved.get("val_fraction", 0.0)),
                        holdout=tuple(saved.get("holdout", ()))) if saved else None
    primer = build_primer(find_corpus(args.corpus).files, args.bytes, split)
    tensors = {k: v for k, v in ck.tensors.items() if not k.startswith("tokenizer.")}
    meta = {k: v for k, v in ck.meta.items() if k not in ("format_version", "config")}
    out = save_checkpoint(args.output, config=ck.config, tensors=tensors,
                          tokenizer_table=ck.tokenizer_table, meta=meta, primer=primer)
    print(f"{args.output}: {out.n_bytes} bytes, primer {len(primer)} bytes "
          f"({int(out.tensors[TENSOR].size) if primer else 0} packed), id {out.model_id_hex}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
