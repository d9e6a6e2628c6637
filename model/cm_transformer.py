"""cm + transformer: the context-mixing model with a frozen checkpoint as one more input.

The transformer knows the domain (it was trained on it) but not the file at hand; cm
knows nothing beforehand and learns the file as it goes. Here the checkpoint's
distribution of each byte becomes one more mixer input of cm (``external_input``): the
probability of the next bit is the exact ratio of two partial sums of the byte's table,
stretched like every other input, and the mixer learns per file how far to trust it.
Everything stays integer: the engine's tables are bit-exact, and so is cm.

Only byte-level checkpoints: cm codes bits of bytes, and a BPE token's table does not
give the distribution of the next byte without summing over every token that starts
with it.

Whole frames: the encoder gets each 8 KiB block's tables from the engine's parallel
pass, then runs cm's C loop over the block; the decoder steps the engine once per byte
(its tables need the bytes decoded so far) and runs cm's C loop over that byte's 8 bits.
The lockstep ``predict``/``update`` protocol stays the reference (coder/frames.py) and
tests compare payloads and symbols with it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from tinyzip.model import primed_cache
from tinyzip.model.checkpoint import Checkpoint
from tinyzip.model.context_mix import N_MASK, ContextMixPredictor
from tinyzip.model.predictor import Predictor
from tinyzip.model.primer import learned_part
from tinyzip.model.transformer_predictor import TransformerPredictor

from tinyzip.errors import UsageError

NAME = "cm+transformer"
#: The checkpoint input's weight after the primer (Q16; EXT_WEIGHT_INIT without one).
PRIMED_EXTERNAL_WEIGHT = 0
#: After the primer, every cm counter counts at most this many bits seen (cap_counts):
#: what the primer taught is a first guess, which the file's own bits soon overrule
#: (docs/context_mix.md, "The count cap"). Archives before it have no "primer_counts"
#: key and keep the primer's counts as learned.
PRIMER_COUNTS = 1
#: ... and every mixer weight keeps this many eighths of what the primer taught it
#: (relax_mixer): the primer's lines are each new, a log's lines repeat, so the mixer's
#: trust must come mostly from the file (held-out sets, cm alone: 470,786 -> 467,946
#: bytes; docs/context_mix.md, "The mixer after the primer"). Archives before it have no
#: "primer_mixer" key and keep the mixer as learned, as level 1 (--adapt fast) does: with
#: its few contexts, relaxing cost 0.12% on held-out kafka (111,666 -> 111,802 bytes).
PRIMER_MIXER = 4
#: cm's state after a primer, kept for the process once it was used twice (a second
#: archive with the same model: tinyzip -r, the API, decoding what was just coded), as
#: its differences from the fresh tables (primed_cache.Entry: 62 MB for the default's
#: whole primer, not 283): (checkpoint id, cm descriptor, bytes learned, count cap, mixer
#: kept) -> the entry, or None when used once. The most recent KEPT_STATES are kept (a
#: run of small and large files uses two).
_primed_states: dict[tuple[bytes, str, int, int | None, int | None],
                     primed_cache.Entry | None] = {}
KEPT_STATES = 2


def forget_primed_states() -> None:
    """Drop the kept state: the next archive learns its primer anew, as a fresh process
    does (benchmarks/bench_model_throughput.py --fresh)."""
    _primed_states.clear()


class CmTransformerPredictor(Predictor):
    """Bitwise cm over B streams, with a byte-level checkpoint's tables as an input."""

    name = NAME
    n_symbols = 2
    freq_bits = 16
    default_streams = ContextMixPredictor.default_streams

    def __init__(
        self, checkpoint: Checkpoint, *, cm: ContextMixPredictor | None = None,
        compiled: bool | None = None, backend: str = "numpy", primed: bool | None = None,
        primer_counts: int | None = PRIMER_COUNTS, primer_mixer: int | str | None = "auto",
    ) -> None:  # fmt: skip
        # primed: cm learns the checkpoint's primer before the data (model/primer.py);
        # None: when the checkpoint has one. primer_counts: the cap on cm's counts after
        # it (None: none, as archives before PRIMER_COUNTS); primer_mixer: the eighths of
        # its mixer weights kept (None: all, as archives before PRIMER_MIXER; "auto":
        # PRIMER_MIXER, but None with level 1's or 2's contexts)
        # backend: the engine's ("torch" runs its matmuls in torch, never compiled); the
        # tables, and so the archives, are the same with every backend and compiled or not
        self.checkpoint = checkpoint
        self.transformer = TransformerPredictor(
            checkpoint, backend=backend, compiled=compiled if backend == "numpy" else False
        )
        if checkpoint.tokenizer_table != tuple(bytes([i]) for i in range(256)):
            raise UsageError(
                f"cm+transformer needs a byte-level checkpoint; {checkpoint.name} has a "
                f"{checkpoint.config.vocab_size}-token vocabulary"
            )
        if cm is None:
            cm = ContextMixPredictor(external_input=True, compiled=compiled)
        if not cm.external_input:
            raise UsageError("cm+transformer needs a cm model made with external_input=True")
        self.cm = cm
        self.primed = bool(checkpoint.primer) if primed is None else primed
        if self.primed and not checkpoint.primer:
            raise UsageError(f"primed=True, but {checkpoint.name} has no primer")
        self.primer_counts = primer_counts if self.primed else None
        if primer_mixer == "auto":
            primer_mixer = None if cm.low_level else PRIMER_MIXER
        if primer_mixer is not None and not isinstance(primer_mixer, int):
            raise UsageError(f"primer_mixer must be an int, None or 'auto', got {primer_mixer!r}")
        self.primer_mixer = primer_mixer if self.primed else None
        self._bits = np.zeros(0, dtype=np.int64)  # the partial byte of each stream
        self._size: int | None = None  # the archive's raw length, if known (expect_size)

    def descriptor(self) -> dict[str, Any]:
        # The checkpoint's id is the header's model_id field; repeating it here (as the
        # first archives did) cost 75 bytes per file.
        out = {"name": NAME, "name_hint": self.checkpoint.name, "cm": self.cm.descriptor()}
        if self.primed:  # archives before the primer have no such key
            out["primed"] = True
            if self.primer_counts is not None:
                out["primer_counts"] = self.primer_counts
            if self.primer_mixer is not None:
                out["primer_mixer"] = self.primer_mixer
        return out

    @property
    def model_id(self) -> bytes:
        """SHA-256 of the checkpoint file: what decoding must find (cm is in the descriptor)."""
        return self.checkpoint.model_id

    # ------------------------------------------------------------------ symbols

    def to_symbols(self, raw: bytes) -> np.ndarray:
        return self.cm.to_symbols(raw)

    def from_symbols(self, symbols: np.ndarray) -> bytes:
        return self.cm.from_symbols(symbols)

    # ---------------------------------------------------------------- lockstep

    def expect_size(self, n_bytes: int | None) -> None:
        # how much of the primer reset learns (primer.learned_part)
        self._size = n_bytes

    def reset(self) -> None:
        self.cm.reset()
        self._learn_primer()
        self.begin(0)  # no streams: the data's first frame starts fresh ones at position 0

    def _learn_primer(self) -> None:
        """cm learns the primer (tables, mixer, APMs) as a stream of its own, which reset's
        begin(0) then forgets: the data starts as a fresh stream at position 0, with only
        what the shared tables learned. The checkpoint's input is left out (uniform tables, whose
        input is 0): it was trained on the primer, and trust learned there would mislead
        the mixer on data the checkpoint never saw.

        The state does not depend on the data: for the whole primer and the least part of
        it, it is kept on disk (model/primed_cache.py), and a process that uses it twice
        keeps it in memory (_primed_states)."""
        if not self.primed:
            return
        primer = self.checkpoint.primer
        part = learned_part(primer, self._size)
        key = (self.checkpoint.model_id, json.dumps(self.cm.descriptor(), sort_keys=True),
               len(part), self.primer_counts, self.primer_mixer)
        tables = self.cm.shared_tables()
        kept = _primed_states.get(key)
        if kept is not None:
            primed_cache.apply(kept, tables)
            _primed_states[key] = _primed_states.pop(key)  # the most recently used: last
            return
        # other parts (inputs of 16-32 KB) would each fill the disk cache with one more entry
        on_disk = len(part) in (len(primer), len(learned_part(primer, 0)))
        disk_key = primed_cache.entry_key(key)
        path = primed_cache.entry_path(disk_key) if on_disk else None
        entry = primed_cache.load(path, disk_key, tables) if path is not None else None
        if entry is None:
            self._learn(part)
            if path is not None or key in _primed_states:  # kept on disk, or used before
                entry = primed_cache.differences(tables, self.cm.fresh_values)
                if path is not None and entry is not None:
                    primed_cache.save(path, disk_key, entry)
        # used before: keep it for the next archive (a single archive keeps nothing)
        used_before = key in _primed_states
        _primed_states.pop(key, None)
        _primed_states[key] = entry if used_before else None
        while len(_primed_states) > KEPT_STATES:
            del _primed_states[next(iter(_primed_states))]

    def _learn(self, part: bytes) -> None:
        """cm learns ``part`` of the primer, then caps its counts and relaxes its mixer."""
        grid = np.unpackbits(np.frombuffer(part, dtype=np.uint8))[None, :]

        # one block of uniform tables, handed out as views: uint32 tables are read in
        # place, unchecked (int64 ones were allocated and range-checked per block, a
        # tenth of the primer's time)
        block = 1 << 13
        ones = np.ones((1, block, 256), dtype=np.uint32)

        def uniform(first: int, count: int) -> np.ndarray:
            return ones[:, :count]

        if self.cm.encode_frame(grid, np.array([grid.shape[1]]), external=uniform,
                                block_bytes=block) is None:
            # no compiled kernels: the lockstep reference (the same state, tests/test_primer.py)
            self.cm.begin(1)
            for t in range(grid.shape[1]):
                if self.cm._bit == 0:
                    self.cm.set_external(uniform(0, 1), self.cm._step)
                self.cm.predict(1)
                self.cm.update(grid[:, t])
        if self.primer_counts is not None:
            self.cm.cap_counts(self.primer_counts)
        if self.primer_mixer is not None:
            self.cm.relax_mixer(self.primer_mixer)
        # ... and the checkpoint's input starts untrusted: once cm knows the kinds of line,
        # a checkpoint on logs it never saw costs more than it brings until the mixer
        # has learned how far to trust it (held-out loghub: 111,870 bytes at the usual
        # 1/4, 111,578 from 0, cm alone 111,604)
        self.cm.set_external_weight(PRIMED_EXTERNAL_WEIGHT)

    def begin(self, n_streams: int) -> None:
        self.cm.begin(n_streams)
        self.transformer.begin(n_streams)
        self._bits = np.zeros(n_streams, dtype=np.int64)

    def _padded(self, tables: np.ndarray) -> np.ndarray:
        """(n, 256) tables of the active streams -> (B, 1, 256) for set_external."""
        out = np.ones((max(self._bits.shape[0], 1), 1, 256), dtype=np.int64)
        out[: tables.shape[0], 0] = tables
        return out

    def predict(self, n_active: int) -> np.ndarray:
        if self.cm._bit == 0:  # a new byte: the transformer's table for it
            tables = self.transformer.predict(n_active)
            self.cm.set_external(self._padded(tables), self.cm._step)
        return self.cm.predict(n_active)

    def update(self, symbols: np.ndarray) -> None:
        y = np.asarray(symbols, dtype=np.int64)
        self.cm.update(y)
        n = y.shape[0]
        self._bits[:n] = (self._bits[:n] << 1) | y
        if self.cm._bit == 0:  # the byte is complete: it is the transformer's next input
            self.transformer.update(self._bits[:n].copy())
            self._bits[:] = 0

    # ------------------------------------------------------------ whole frames

    #: Bytes per encoder block: tables (B, block, 257) int64 are 16.8 MiB a stream.
    ENCODE_BLOCK = 8192

    def encode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, on_step: Any = None
    ) -> list[bytes] | None:
        if not self.cm.compiled or grid.dtype != np.uint8:
            return None
        data = np.packbits(grid, axis=1).astype(np.int64)  # (B, T / 8) bytes, 0-padded
        return self.cm.encode_frame(
            grid, lengths, on_step, external=lambda first, count: self.block_tables(
                data, first, count
            ), block_bytes=self.ENCODE_BLOCK, prefetch=self.transformer.engine.threads > 1,
        )  # fmt: skip

    def block_tables(self, data: np.ndarray, first: int, count: int) -> np.ndarray:
        """The engine's tables (B, count, 256) of bytes first..first+count-1 of ``data``
        (B, T) int64, from one parallel pass over their receptive field."""
        engine = self.transformer.engine
        # Those rows need the inputs (BOS, then each previous byte) from receptive_field
        # positions earlier.
        lo = max(0, first - engine.receptive_field)
        inputs = np.empty((data.shape[0], first + count - lo), dtype=np.int64)
        if lo == 0:
            inputs[:, 0] = engine.bos
            inputs[:, 1:] = data[:, : first + count - 1]
        else:
            inputs[:] = data[:, lo - 1 : first + count - 1]
        # (_forward: the pass tables_parallel runs on each of its chunks)
        return engine._forward(inputs)[:, first - lo :]

    def decode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, rows: np.ndarray, decoder: Any,
        on_step: Any = None,
    ) -> bool:  # fmt: skip
        if not self.cm.compiled or grid.dtype != np.uint8 or decoder.freq_bits != 16:
            return False
        n_rows = grid.shape[0]
        lengths = np.asarray(lengths, dtype=np.int64)
        engine = self.transformer.engine
        engine.reset(n_rows)
        if engine._kernel is None:  # the numpy engine: step() allocates its tables
            return self._decode_frame_steps(grid, lengths, rows, decoder, on_step)
        # Per byte, cm's kernel feeds each active stream's last byte (BOS first) to one
        # engine step (a C call, model/_engine_step.h), which writes its table into the
        # buffer that cm reads in place. (Through Python, the step and the calls around
        # it cost ~4 us a byte, a fifth of the decoding time.) With two threads or more,
        # a helper thread runs each next byte's step on a guess while cm decodes.
        tables = np.ones((max(n_rows, 1), 1, 256), dtype=np.uint32)
        done = self.cm.decode_frame(
            grid, lengths, rows, decoder, on_step, stepper=engine.stepper(), tables=tables,
            speculate=engine.threads > 1,
        )  # fmt: skip
        engine.stepped_to(grid.shape[1] // 8)
        return done

    def _decode_frame_steps(
        self, grid: np.ndarray, lengths: np.ndarray, rows: np.ndarray, decoder: Any,
        on_step: Any,
    ) -> bool:  # fmt: skip
        """decode_frame with engine.step (numpy or torch engine) feeding cm's C loop."""
        engine = self.transformer.engine
        active = np.searchsorted(-lengths, -8 * np.arange(grid.shape[1] // 8), side="left")
        out = np.ones((max(grid.shape[0], 1), 1, 256), dtype=np.int64)
        inputs = np.full(grid.shape[0], engine.bos, dtype=np.int64)

        def external(first: int, count: int) -> np.ndarray:
            n = int(active[first])
            if first:  # the byte decoded last is each active stream's next input
                inputs[:n] = np.packbits(grid[:n, 8 * first - 8 : 8 * first], axis=1)[:, 0]
            out[:n, 0] = engine.step(inputs[:n])
            return out

        return self.cm.decode_frame(
            grid, lengths, rows, decoder, on_step, external=external, trusted_tables=True
        )


def from_descriptor(descriptor: dict[str, Any], checkpoint: Checkpoint) -> CmTransformerPredictor:
    """The predictor an archive names, given the checkpoint its model id points to."""
    from tinyzip.model.context_mix import from_descriptor as cm_from_descriptor

    from tinyzip.errors import CorruptInputError

    cm = cm_from_descriptor(descriptor.get("cm"))
    if not cm.external_input:
        raise CorruptInputError("cm+transformer archive whose cm model has no external input")
    primed = descriptor.get("primed", False)
    if not isinstance(primed, bool) or (primed and not checkpoint.primer):
        raise CorruptInputError(f"cm+transformer archive with primed={primed!r}, and "
                                f"{checkpoint.name} has {'a' if checkpoint.primer else 'no'} primer")
    # what cm does after the primer: small ints, only beside it; absent (None) in older archives
    after: dict[str, int | None] = {}
    for key, top in (("primer_counts", N_MASK), ("primer_mixer", 8)):
        value = after[key] = descriptor.get(key)
        if key in descriptor and (type(value) is not int or not 0 <= value <= top or not primed):
            raise CorruptInputError(f"cm+transformer archive with {key}={value!r}")
    pred = CmTransformerPredictor(checkpoint, cm=cm, primed=primed, **after)
    # archives written before 2026-12 also name the checkpoint inside the descriptor
    legacy = {**pred.descriptor(), "model_id": checkpoint.model_id_hex}
    if descriptor not in (pred.descriptor(), legacy):
        raise CorruptInputError(f"non-canonical cm+transformer descriptor: {descriptor!r}")
    return pred
