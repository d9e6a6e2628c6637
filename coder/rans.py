"""rANS entropy coder over B independent streams, vectorised with numpy.

The coder is exact integer arithmetic on caller-supplied frequency tables: every row of a
table holds integer frequencies summing to ``M = 2**freq_bits`` (``freq_bits <= 20``), so the
bitstream depends on nothing but the tables and the symbols (no float, no library version).

State and renormalisation (ryg's "rans_word" variant, see docs/coder.md):

* the state ``x`` of each stream lives in ``[L, L * 2**16)`` with ``L = 2**max(16, freq_bits)``
  (``[2**16, 2**32)`` for every ``freq_bits <= 16``, the usual case; large vocabularies use
  up to 20 bits so that the floor of one count per symbol costs little mass);
* words are 16 bits; for freq_bits <= 16 one word per symbol is always enough, so
  renormalisation is a single branch-free ``np.where`` per step; above 16 bits a symbol
  rarer than 2**(freq_bits - 16) / M may need two words (never more, as L <= 2**20);
* encoding a symbol with range ``[start, start + freq)``::

      while x >= freq << (16 + log2(L) - freq_bits): emit x & 0xFFFF; x >>= 16
      x = (x // freq) * M + x % freq + start

* decoding inverts it exactly::

      slot = x % M;  find s with start_s <= slot < start_s + freq_s
      x = freq_s * (x >> freq_bits) + slot - start_s
      while x < L: x = (x << 16) | next word

  (the decoder reads at step t, last emitted first, the words the encoder emitted there).

rANS is last-in first-out, so the encoder runs over the symbols in reverse and the decoder
reads forwards; both start/end at the state ``L``. Payload of a stream (all little-endian)::

    final encoder state: 4 bytes (uint32; 5 bytes when freq_bits > 16) | words: 2 bytes
    each (uint16), in decoding order

A zero-length stream has the empty payload ``b""``.

The decoder reads hostile data: it never indexes outside its buffers (reading past the end
of a payload yields zero words and is counted), its state stays below ``L * 2**16`` whatever the
payload, each ``decode`` call costs O(streams * symbols) and nothing else, and ``finish``
reports every departure from a canonical payload as :class:`CorruptInputError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from numpy.typing import NDArray

from tinyzip.errors import CorruptInputError, UsageError

#: Lower bound of the coder state for freq_bits <= 16; the state lies in [STATE_LOWER, 2**32).
STATE_LOWER = 1 << 16
#: Bits per renormalisation word.
WORD_BITS = 16
#: Largest supported ``freq_bits``: the state then needs 36 bits (int64 arithmetic with room
#: to spare, 5 bytes in a payload).
MAX_FREQ_BITS = 20


def lower_bits(freq_bits: int) -> int:
    """log2 of the state's lower bound L for ``freq_bits``: M = 2**freq_bits must divide L."""
    return max(WORD_BITS, int(freq_bits))


def state_bytes(freq_bits: int) -> int:
    """Bytes of the final state at the head of a payload: 4 up to freq_bits 16, else 5."""
    return (lower_bits(freq_bits) + WORD_BITS + 7) // 8


#: Steps per block of the encoder's int64 working arrays (see encode_streams).
ENCODE_BLOCK = 4096


def _check_freq_bits(freq_bits: int) -> None:
    if not isinstance(freq_bits, (int, np.integer)) or not 1 <= freq_bits <= MAX_FREQ_BITS:
        raise UsageError(f"freq_bits must be an integer in 1..{MAX_FREQ_BITS}, got {freq_bits!r}")


def symbol_ranges(
    tables: NDArray[np.integer], symbols: NDArray[np.integer]
) -> tuple[NDArray[np.uint32], NDArray[np.uint32]]:
    """(n, V) uint32 tables and (n,) symbols -> (start, freq) uint32 arrays of shape (n,).

    ``start`` is the sum of the row's frequencies before the symbol, ``freq`` its own one.
    Rows are not checked here (``encode_streams`` checks every range, the decoder every row).
    """
    tables = np.asarray(tables)
    symbols = np.asarray(symbols)
    if tables.ndim != 2 or symbols.shape != tables.shape[:1]:
        raise UsageError(
            f"symbol_ranges needs (n, V) tables and (n,) symbols, got {tables.shape} and "
            f"{symbols.shape}"
        )
    n, n_symbols = tables.shape
    if n == 0:
        empty = np.zeros(0, dtype=np.uint32)
        return empty, empty.copy()
    if symbols.dtype.kind not in "iu" or tables.dtype.kind not in "iu":
        raise UsageError(
            f"tables and symbols must be integers, got {tables.dtype} and {symbols.dtype}"
        )
    sym = symbols.astype(np.int64, copy=False)
    # Viewed as unsigned, a negative symbol is huge: one comparison checks both ends.
    if (sym.view(np.uint64) >= n_symbols).any():
        raise UsageError(
            f"symbols must lie in 0..{n_symbols - 1}, got {symbols.min()}..{symbols.max()}"
        )
    flat = np.ascontiguousarray(tables).reshape(-1)
    # start = sum of the row before the symbol, for every row in one reduceat over the
    # interleaved bounds [row_i, row_i + sym_i, row_(i+1), ...]: the even outputs are the
    # wanted sums and only those elements are read (half a cumsum's work). reduceat yields
    # flat[a] instead of 0 for an empty segment (sym_i == 0), hence the where.
    bounds = np.empty(2 * n, dtype=np.int64)
    bounds[0::2] = np.arange(n, dtype=np.int64) * n_symbols
    at = bounds[1::2]
    np.add(bounds[0::2], sym, out=at)
    sums = np.add.reduceat(flat, bounds, dtype=np.int64)[0::2]
    start = np.where(sym > 0, sums, 0)
    return start.astype(np.uint32), flat.take(at).astype(np.uint32)


def encode_streams(
    starts: NDArray[np.integer],
    freqs: NDArray[np.integer],
    lengths: NDArray[np.integer],
    *,
    freq_bits: int,
) -> list[bytes]:
    """Encode B streams; returns one payload per stream (see the module docstring).

    starts/freqs: (T, B) arrays, step-major (row t holds step t of every stream); entries of a
    stream past its length are ignored. lengths: (B,) number of symbols of each stream.
    Stream b's payload decodes with :class:`StreamDecoder`.
    """
    _check_freq_bits(freq_bits)
    starts = np.asarray(starts)
    freqs = np.asarray(freqs)
    lengths = np.asarray(lengths)
    if starts.ndim != 2 or freqs.shape != starts.shape or lengths.shape != starts.shape[1:]:
        raise UsageError(
            f"encode_streams needs (T, B) starts and freqs and (B,) lengths, got "
            f"{starts.shape}, {freqs.shape} and {lengths.shape}"
        )
    n_steps, n_streams = starts.shape
    if n_streams == 0:
        return []
    if any(a.dtype.kind not in "iu" for a in (starts, freqs, lengths)):
        raise UsageError(
            f"starts, freqs and lengths must be integers, got {starts.dtype}, {freqs.dtype} "
            f"and {lengths.dtype}"
        )
    lengths = lengths.astype(np.int64)
    if lengths.min() < 0 or lengths.max() > n_steps:
        raise UsageError(
            f"stream lengths must lie in 0..{n_steps} (rows given), got "
            f"{lengths.min()}..{lengths.max()}"
        )
    max_len = int(lengths.max())
    total = 1 << freq_bits
    lbits = lower_bits(freq_bits)
    x = np.full(n_streams, 1 << lbits, dtype=np.int64)
    # Up to two words per step (two only above 16 bits): slot 1 holds the first one emitted,
    # slot 0 the second, so that a step's words in (slot 0, slot 1) order are decoding order.
    n_slots = 1 if freq_bits <= WORD_BITS else 2
    words = np.empty((max_len, n_slots, n_streams), dtype=np.uint16)
    emitted = np.empty((max_len, n_slots, n_streams), dtype=bool)  # every entry is set
    q = np.empty(n_streams, dtype=np.int64)
    # The int64 working arrays are built one block of steps at a time (backwards, as the
    # encoder runs), so memory stays ~3 bytes per symbol plus one block, whatever T is.
    for hi in range(max_len, 0, -ENCODE_BLOCK):
        lo = max(0, hi - ENCODE_BLOCK)
        active = np.arange(lo, hi, dtype=np.int64)[:, None] < lengths[None, :]  # (t, B)
        # A stream past its end codes the range [0, M): that step is the identity on the
        # state and never emits a word (x < L * 2**16 = M << (16 + lbits - freq_bits)): no
        # mask needed.
        freq = np.where(active, freqs[lo:hi].astype(np.int64), total)
        start = np.where(active, starts[lo:hi].astype(np.int64), 0)
        if (freq < 1).any() or (start < 0).any() or (start + freq > total).any():
            bad = np.argwhere((freq < 1) | (start < 0) | (start + freq > total))[0]
            raise UsageError(
                f"symbol range [{start[bad[0], bad[1]]}, +{freq[bad[0], bad[1]]}) at step "
                f"{lo + bad[0]} of stream {bad[1]} is not a non-empty range inside [0, {total})"
            )
        # x >= freq << (16 + lbits - freq_bits) is when encoding would leave the state's
        # 16 + lbits bits: emit first.
        emit_bound = freq << (WORD_BITS + lbits - freq_bits)
        # x_new = (x // f) * M + x % f + s = x + (x // f) * (M - f) + s: one multiply fewer.
        gain = total - freq
        for t in range(hi - 1, lo - 1, -1):
            i = t - lo
            for slot in range(n_slots - 1, -1, -1):
                e = emitted[t, slot]
                np.greater_equal(x, emit_bound[i], out=e)
                words[t, slot] = x  # low 16 bits (assignment casts unsafely, i.e. wraps)
                np.right_shift(x, e * WORD_BITS, out=x)
            np.floor_divide(x, freq[i], out=q)
            q *= gain[i]
            x += q
            x += start[i]

    # Words in decoding order: for each stream the emitting steps in increasing t (the
    # decoder reads at step t the words the encoder wrote at step t, slot 0 first).
    order = (2, 0, 1)  # (B, T, slot)
    counts = emitted.sum(axis=(0, 1))
    stream_words = words.transpose(order)[emitted.transpose(order)].astype("<u2")
    ends = np.cumsum(counts)
    n_state = state_bytes(freq_bits)
    states = x.astype("<u8")
    payloads: list[bytes] = []
    for b in range(n_streams):
        if lengths[b] == 0:
            payloads.append(b"")
            continue
        chunk = stream_words[ends[b] - counts[b] : ends[b]]
        payloads.append(states[b].tobytes()[:n_state] + chunk.tobytes())
    return payloads


class StreamDecoder:
    """Decodes B payloads in lockstep, one symbol per active stream per ``decode`` call.

    The active streams are always a prefix ``0..k-1``; ``k`` may shrink between calls, never
    grow. Call ``finish`` at the end: it raises :class:`CorruptInputError` unless every stream
    ended exactly where its encoder started.
    """

    def __init__(self, payloads: Sequence[bytes], *, freq_bits: int) -> None:
        _check_freq_bits(freq_bits)
        self._freq_bits = int(freq_bits)
        self._total = 1 << self._freq_bits
        #: the state's lower bound L: where every stream starts encoding and ends decoding.
        self.state_lower = 1 << lower_bits(self._freq_bits)
        n_state = state_bytes(self._freq_bits)
        n_streams = len(payloads)
        self._n_streams = n_streams
        self._n_active = n_streams
        self._n_steps = 0
        self._finished = False
        # Structural damage (odd length, short state) is remembered and reported by finish:
        # decoding goes on with zero-padded data so the caller sees one error path.
        self._malformed = np.zeros(n_streams, dtype=bool)
        self._empty = np.array([len(p) == 0 for p in payloads], dtype=bool)
        #: decode steps taken by each stream (filled in when it leaves the active prefix).
        self._steps = np.full(n_streams, -1, dtype=np.int64)

        states = np.full(n_streams, self.state_lower, dtype=np.int64)
        word_arrays: list[NDArray[np.uint16]] = []
        for b, raw in enumerate(payloads):
            data = bytes(raw)
            if not data:
                word_arrays.append(np.zeros(0, dtype=np.uint16))
                continue
            if len(data) < n_state or (len(data) - n_state) % 2:
                self._malformed[b] = True
            head = data[:n_state].ljust(n_state, b"\0")
            # masked into the state's range (a 5-byte head can hold more; the check below
            # flags it): the decoder's state then stays below L * 2**16 whatever the payload.
            raw_state = int.from_bytes(head, "little")
            states[b] = raw_state & ((self.state_lower << WORD_BITS) - 1)
            self._malformed[b] |= raw_state != states[b]
            body = data[n_state:]
            body = body[: len(body) - len(body) % 2]
            word_arrays.append(np.frombuffer(body, dtype="<u2").astype(np.uint16))
        # A valid encoder never leaves a state below L; decoding one would still be safe
        # (the state stays below L * 2**16) but the payload cannot be canonical.
        self._malformed |= states < self.state_lower

        # All words in one flat array, each stream's words followed by one zero sentinel, so
        # a read past the end lands on a zero without a branch: index min(cursor, limit).
        n_words = np.array([len(w) for w in word_arrays], dtype=np.int64)
        self._base = np.concatenate(([0], np.cumsum(n_words + 1)[:-1])).astype(np.int64)
        self._limit = self._base + n_words
        parts: list[NDArray[np.uint16]] = []
        for w in word_arrays:
            parts.append(w)
            parts.append(np.zeros(1, dtype=np.uint16))
        self._words = np.concatenate(parts) if parts else np.zeros(1, dtype=np.uint16)
        self._cursor = self._base.copy()
        self._x = states
        # Row offsets of the flat cumulative table: row i starts at i * M.
        self._row_total = np.arange(n_streams, dtype=np.int64) * self._total
        self._row_end = self._row_total + self._total
        # numpy scalars for the hot path (Python ints cost a conversion per operation).
        self._fb = np.int64(self._freq_bits)
        self._slot_mask = np.int64(self._total - 1)
        self._total_i64 = np.int64(self._total)
        self._one = np.int64(1)
        self._lower = np.int64(self.state_lower)
        self._n_reads = 1 if self._freq_bits <= WORD_BITS else 2
        self._word_bits = np.int64(WORD_BITS)
        self._views_k = -1
        self._views_v = -1
        self._views: tuple[NDArray[np.int64], ...] = ()

    @property
    def freq_bits(self) -> int:
        """Every table row sums to 2**freq_bits."""
        return self._freq_bits

    @property
    def n_active(self) -> int:
        """Number of streams still decoding (a prefix of the payloads)."""
        return self._n_active

    def decode(self, tables: NDArray[np.integer]) -> NDArray[np.int64]:
        """Decode one symbol of each of the first k streams.

        tables: (k, V) integer frequencies, each row summing to 2**freq_bits, for the FIRST k
        streams. Returns (k,) int64 symbols, always in 0..V-1 whatever the payload.
        """
        if self._finished:
            raise UsageError("this StreamDecoder has finished; make a new one per set of payloads")
        tables = np.asarray(tables)
        if tables.ndim != 2:
            raise UsageError(f"decode needs (k, V) tables, got shape {tables.shape}")
        k, n_symbols = tables.shape
        if k > self._n_active:
            raise UsageError(
                f"the active streams may only shrink: {k} tables for {self._n_active} active"
            )
        if n_symbols < 1:
            raise UsageError("tables need at least one symbol")
        if tables.dtype.kind != "u":
            # Unsigned tables (the contract) cannot hold negative counts; anything else is
            # checked here, off the fast path, because a negative count would let the state grow.
            if tables.dtype.kind != "i" or (k and tables.min() < 0):
                raise UsageError(f"tables must hold non-negative integers, got {tables.dtype}")
        if k < self._n_active:
            self._steps[k : self._n_active] = self._n_steps
            self._n_active = k
        self._n_steps += 1
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        if self._views_k != k or self._views_v != n_symbols:
            self._make_views(k, n_symbols)
        x, cursor, limit, row_total, row_end, row_start = self._views

        # Hot path: ndarray methods and numpy scalars rather than np.* wrappers and Python
        # ints, whose dispatch costs more than the arithmetic on B = 64 elements.
        fb = self._fb
        slot = x & self._slot_mask
        if n_symbols == 2:
            # Binary fast path (bitwise models): no cumulative table, no search.
            f0 = tables[:, 0].astype(np.int64)
            f1 = tables[:, 1]
            if ((f0 + f1) != self._total_i64).any():
                self._bad_tables(tables)
            sym = slot >= f0
            freq = np.where(sym, f1, f0)
            # x' = freq * (x >> fb) + slot - start, start = f0 if the symbol is 1 else 0
            x_new = freq * (x >> fb) + slot - f0 * sym
            symbols = sym.astype(np.int64)
        else:
            flat = np.ascontiguousarray(tables).reshape(-1)
            # One cumulative sum over all rows: as each row sums to M, row i's cumulative
            # frequencies are offset by exactly i * M, so one searchsorted finds every symbol.
            cum = flat.cumsum(dtype=np.int64)
            if (cum[n_symbols - 1 :: n_symbols] != row_end).any():
                self._bad_tables(tables)
            target = slot + row_total
            # side="right": the first j with cum[j] > target, so cum[j-1] <= target < cum[j];
            # with exact row totals j stays inside row i and its frequency is >= 1.
            j = cum.searchsorted(target, side="right")
            freq = flat.take(j)
            # slot - start = target - (cum[j] - freq)
            x_new = freq * ((x >> fb) + self._one) + (target - cum.take(j))
            symbols = j - row_start
        # Renormalise: x_new >= freq >= 1 after a step, so one 16-bit word brings it to
        # L = 2**16, two to any L <= 2**32 (the second only above 16 bits).
        for _ in range(self._n_reads):
            need = x_new < self._lower
            word = self._words.take(np.minimum(cursor, limit))
            x_new = np.where(need, (x_new << self._word_bits) | word, x_new)
            cursor += need
        x[...] = x_new
        return cast("NDArray[np.int64]", symbols)

    def raw_state(self) -> tuple[NDArray[np.int64], ...]:
        """(x, cursor, limit, words): the arrays a compiled loop decodes with in place,
        exactly as ``decode`` does; it then reports its steps with ``account``."""
        return self._x, self._cursor, self._limit, self._words

    def account(self, counts: NDArray[np.int64]) -> None:
        """Record steps decoded outside ``decode``: counts[t] streams were active at step t
        (non-increasing, at most ``n_active``), as if ``decode`` had been called per step."""
        counts = np.asarray(counts, dtype=np.int64)
        if self._finished:
            raise UsageError("this StreamDecoder has finished")
        if counts.size == 0:
            return
        if counts[0] > self._n_active or (np.diff(counts) > 0).any() or counts[-1] < 0:
            raise UsageError("active counts must be non-increasing and at most n_active")
        new = int(counts[-1])
        for b in range(new, self._n_active):
            # steps before stream b left: the t with counts[t] > b (a prefix of counts)
            self._steps[b] = self._n_steps + int(np.searchsorted(-counts, -b, side="left"))
        self._n_active = new
        self._n_steps += counts.size
        self._views_k = -1

    def _make_views(self, k: int, n_symbols: int) -> None:
        """Views of the per-stream arrays on the active prefix, rebuilt only when k changes."""
        self._views_k = k
        self._views_v = n_symbols
        row_start = np.arange(k, dtype=np.int64) * n_symbols
        self._views = (
            self._x[:k],
            self._cursor[:k],
            self._limit[:k],
            self._row_total[:k],
            self._row_end[:k],
            row_start,
        )

    def _bad_tables(self, tables: NDArray[np.integer]) -> None:
        sums = tables.astype(np.int64).sum(axis=1)
        bad = int(np.flatnonzero(sums != self._total)[0])
        raise UsageError(f"table row {bad} sums to {sums[bad]}, not 2**freq_bits = {self._total}")

    def finish(self) -> None:
        """Check that every stream ended exactly where its encoder started.

        Raises CorruptInputError if any stream's final state is not L, if words were left
        unread or read past the end, or if a payload is not one the encoder can produce.
        """
        if self._finished:
            raise UsageError("finish was already called on this StreamDecoder")
        self._finished = True
        steps = self._steps.copy()
        steps[: self._n_active] = self._n_steps
        bad_state = self._x != self.state_lower
        unread = self._cursor < self._limit
        overread = self._cursor > self._limit
        # The encoder writes b"" exactly for zero-length streams.
        noncanonical = self._malformed | (self._empty != (steps == 0))
        bad = bad_state | unread | overread | noncanonical
        if bad.any():
            idx = np.flatnonzero(bad)
            first = int(idx[0])
            why = (
                "malformed or non-canonical payload"
                if noncanonical[first]
                else "read past the end of its payload"
                if overread[first]
                else "words left unread"
                if unread[first]
                else f"final state {int(self._x[first]):#x} != {self.state_lower:#x}"
            )
            raise CorruptInputError(
                f"rANS payload of stream {first} is corrupt ({why}); "
                f"{len(idx)} of {self._n_streams} streams failed the end check"
            )
