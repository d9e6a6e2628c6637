"""Tests of the rANS coder over B streams (coder/rans.py)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from tinyzip.coder.rans import (
    MAX_FREQ_BITS,
    STATE_LOWER,
    StreamDecoder,
    encode_streams,
    state_bytes,
    symbol_ranges,
)

from tinyzip.errors import CorruptInputError, UsageError

GOLDEN = Path(__file__).parent / "golden" / "rans.json"


# --- helpers -------------------------------------------------------------------------------


def peaked_tables(
    rng: np.random.Generator, n: int, n_symbols: int, freq_bits: int, *, sharpness: float = 3.0
) -> NDArray[np.uint32]:
    """n tables: softmax of sharpness*N(0,1) logits, floor(p*(M-V))+1, remainder on the top."""
    total = 1 << freq_bits
    logits = sharpness * rng.standard_normal((n, n_symbols))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    freq = np.floor(p * (total - n_symbols)).astype(np.int64) + 1
    freq[np.arange(n), p.argmax(axis=1)] += total - freq.sum(axis=1)
    return freq.astype(np.uint32)


def sample(
    rng: np.random.Generator, pool: NDArray[np.uint32], which: NDArray[np.int64]
) -> NDArray[np.int64]:
    """One symbol per entry of ``which``, drawn from table pool[which] (without building the
    (n, V) array: one flat cumulative sum of the pool, rows offset by i * M)."""
    n_symbols = pool.shape[1]
    total = int(pool[0].sum())
    cum = np.cumsum(pool.reshape(-1), dtype=np.int64)
    u = rng.integers(0, total, size=which.shape)
    j = np.searchsorted(cum, which * total + u, side="right")
    return j - which * n_symbols


class Schedule:
    """Tables and symbols of B streams, stream b of length lengths[b] (non-increasing).

    Step t of stream b uses pool[which[t, b]], so big alphabets stay small in memory.
    """

    def __init__(
        self,
        pool: NDArray[np.uint32],
        which: NDArray[np.int64],
        symbols: NDArray[np.int64],
        lengths: NDArray[np.int64],
        freq_bits: int,
    ) -> None:
        self.pool, self.which, self.symbols = pool, which, symbols
        self.lengths, self.freq_bits = lengths, freq_bits

    def tables(self, t: int) -> NDArray[np.uint32]:
        n = int((self.lengths > t).sum())
        return self.pool[self.which[t, :n]]

    def encode(self, symbols: NDArray[np.int64] | None = None) -> list[bytes]:
        symbols = self.symbols if symbols is None else symbols
        n_steps, n_streams = self.which.shape
        starts = np.zeros((n_steps, n_streams), dtype=np.uint32)
        freqs = np.zeros((n_steps, n_streams), dtype=np.uint32)
        for t in range(n_steps):
            n = int((self.lengths > t).sum())
            starts[t, :n], freqs[t, :n] = symbol_ranges(self.tables(t), symbols[t, :n])
        return encode_streams(starts, freqs, self.lengths, freq_bits=self.freq_bits)

    def decode(self, payloads: list[bytes]) -> tuple[NDArray[np.int64], StreamDecoder]:
        """Decode every step; returns the symbols (-1 past a stream's end) and the decoder."""
        decoder = StreamDecoder(payloads, freq_bits=self.freq_bits)
        out = np.full(self.which.shape, -1, dtype=np.int64)
        for t in range(self.which.shape[0]):
            tables = self.tables(t)
            got = decoder.decode(tables)
            assert got.shape == (len(tables),)
            assert got.dtype == np.int64
            out[t, : len(got)] = got
        return out, decoder

    def expected(self) -> NDArray[np.int64]:
        out = self.symbols.copy()
        out[np.arange(len(out))[:, None] >= self.lengths[None, :]] = -1
        return out


def make_schedule(
    rng: np.random.Generator,
    *,
    n_streams: int,
    n_symbols: int,
    freq_bits: int,
    max_len: int,
    n_pool: int = 32,
    zero_length: bool = True,
) -> Schedule:
    pool = peaked_tables(rng, n_pool, n_symbols, freq_bits, sharpness=float(rng.uniform(0, 4)))
    lengths = rng.integers(0 if zero_length else 1, max_len + 1, size=n_streams)
    lengths[0] = max_len
    if zero_length and n_streams > 1:
        lengths[-1] = 0
    lengths = np.sort(lengths)[::-1].copy()
    which = rng.integers(0, n_pool, size=(max_len, n_streams))
    symbols = sample(rng, pool, which)
    return Schedule(pool, which, symbols, lengths, freq_bits)


def roundtrip(schedule: Schedule) -> list[bytes]:
    payloads = schedule.encode()
    got, decoder = schedule.decode(payloads)
    decoder.finish()
    np.testing.assert_array_equal(got, schedule.expected())
    return payloads


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("freq_bits", [12, 16, 20])
@pytest.mark.parametrize("n_symbols", [2, 3, 256, 4096])
@pytest.mark.parametrize("n_streams", [1, 7, 64])
def test_roundtrip_unequal_stream_lengths(n_streams: int, n_symbols: int, freq_bits: int) -> None:
    rng = np.random.default_rng([n_streams, n_symbols, freq_bits])
    max_len = 60 if n_symbols == 4096 else 150
    schedule = make_schedule(
        rng, n_streams=n_streams, n_symbols=n_symbols, freq_bits=freq_bits, max_len=max_len
    )
    payloads = roundtrip(schedule)
    for b, payload in enumerate(payloads):
        assert (payload == b"") == (schedule.lengths[b] == 0)
        assert (len(payload) - state_bytes(freq_bits) * bool(payload)) % 2 == 0


@pytest.mark.parametrize("freq_bits", [12, 16, 20])
@pytest.mark.parametrize("n_symbols", [2, 3, 256, 4096])
@pytest.mark.parametrize("pattern", ["likely", "rare", "mixed"])
def test_roundtrip_extreme_tables(n_symbols: int, freq_bits: int, pattern: str) -> None:
    # One symbol holds 2**k - (V - 1), every other symbol the minimum of 1: the rare ones
    # cost the full k bits (a word nearly every symbol), the likely one almost nothing.
    total = 1 << freq_bits
    n_streams, max_len = 5, 200
    pool = np.ones((n_symbols, n_symbols), dtype=np.uint32)
    pool[np.arange(n_symbols), np.arange(n_symbols)] = total - (n_symbols - 1)
    rng = np.random.default_rng(n_symbols + freq_bits)
    which = rng.integers(0, n_symbols, size=(max_len, n_streams))
    if pattern == "likely":
        symbols = which.copy()
    elif pattern == "rare":
        symbols = (which + rng.integers(1, n_symbols, size=which.shape)) % n_symbols
    else:
        symbols = np.where(
            rng.random(which.shape) < 0.9, which, rng.integers(0, n_symbols, which.shape)
        )
    lengths = np.array([200, 200, 150, 1, 0])
    roundtrip(Schedule(pool, which, symbols, lengths, freq_bits))


@pytest.mark.parametrize("freq_bits", range(1, MAX_FREQ_BITS + 1))
def test_roundtrip_every_freq_bits(freq_bits: int) -> None:
    rng = np.random.default_rng(freq_bits)
    n_symbols = min(5, 1 << freq_bits)
    roundtrip(
        make_schedule(rng, n_streams=3, n_symbols=n_symbols, freq_bits=freq_bits, max_len=300)
    )


def test_roundtrip_single_symbol_alphabet() -> None:
    # V = 1 carries no information: the state never moves, the payload is the state alone.
    schedule = Schedule(
        np.array([[1 << 12]], dtype=np.uint32),
        np.zeros((10, 2), dtype=np.int64),
        np.zeros((10, 2), dtype=np.int64),
        np.array([10, 3]),
        12,
    )
    payloads = roundtrip(schedule)
    assert payloads == [STATE_LOWER.to_bytes(4, "little")] * 2


def test_zero_length_streams_give_empty_payloads() -> None:
    payloads = encode_streams(
        np.zeros((0, 3), np.uint32),
        np.zeros((0, 3), np.uint32),
        np.zeros(3, np.int64),
        freq_bits=16,
    )
    assert payloads == [b"", b"", b""]
    StreamDecoder(payloads, freq_bits=16).finish()
    assert encode_streams(np.zeros((4, 0)), np.zeros((4, 0)), np.zeros(0), freq_bits=16) == []
    StreamDecoder([], freq_bits=16).finish()
    # a step with no active stream left is allowed and decodes nothing
    decoder = StreamDecoder(payloads, freq_bits=16)
    assert decoder.decode(np.zeros((0, 256), np.uint32)).shape == (0,)
    assert decoder.n_active == 0
    decoder.finish()


def test_encoder_ignores_entries_past_stream_length() -> None:
    starts = np.array([[0, 0], [4, 0]], dtype=np.uint32)
    freqs = np.array([[4, 12], [12, 0]], dtype=np.uint32)  # (1, 1) is past stream 1's end
    junk = freqs.copy()
    junk[1, 1] = 99999
    lengths = np.array([2, 1])
    a = encode_streams(starts, freqs, lengths, freq_bits=4)
    b = encode_streams(starts, junk, lengths, freq_bits=4)
    assert a == b


def test_payload_bytes_match_hand_computation() -> None:
    # M = 16, table [4, 12]; symbols [1, 0] are encoded in reverse from x = 65536:
    #   symbol 0 (start 0, freq 4):  x = (65536 // 4) * 16 + 0 + 0      = 262144
    #   symbol 1 (start 4, freq 12): x = (262144 // 12) * 16 + 4 + 4   = 349528 = 0x00055558
    # no renormalisation (x < freq << 28), so the payload is the state, little-endian.
    payloads = encode_streams(
        np.array([[4], [0]]), np.array([[12], [4]]), np.array([2]), freq_bits=4
    )
    assert payloads == [bytes.fromhex("58550500")]
    # Table [1, 15], symbol 0 four times: x goes 2**16 -> 2**20 -> 2**24 -> 2**28; the last
    # one encoded (step 0) finds x >= 1 << 28, emits its low word 0x0000, and x = 2**12 * 16.
    payloads = encode_streams(
        np.zeros((4, 1), np.uint32), np.ones((4, 1), np.uint32), np.array([4]), freq_bits=4
    )
    assert payloads == [bytes.fromhex("000001000000")]


def test_payload_bytes_above_16_freq_bits_match_hand_computation() -> None:
    # M = L = 2**20, table [1, M - 1]: the emit bound of symbol 0 is 1 << 16. Symbol 0 four
    # times, encoded backwards from x = 2**20, with x = 2**20 ... 2**32 before each step:
    #   x = 2**20, 2**24, 2**28 emit one word each (x -> 16, 2**8, 2**12, then x * M);
    #   x = 2**32 (step 0) emits two: x -> 2**16, still >= 1 << 16, -> 1, then x = 2**20.
    # Five zero words; the state takes 5 bytes (36 bits can be needed above 16 bits).
    m = 1 << 20
    payloads = encode_streams(
        np.zeros((4, 1), np.uint32), np.ones((4, 1), np.uint32), np.array([4]), freq_bits=20
    )
    assert payloads == [(1 << 20).to_bytes(5, "little") + bytes(10)]
    decoder = StreamDecoder(payloads, freq_bits=20)
    for _ in range(4):
        assert decoder.decode(np.array([[1, m - 1]], dtype=np.uint32))[0] == 0
    decoder.finish()


def test_freq_bits_up_to_16_keep_the_32_bit_state() -> None:
    # The wider state is only for freq_bits > 16: every earlier archive keeps its bytes.
    assert [state_bytes(fb) for fb in (1, 12, 16, 17, 20)] == [4, 4, 4, 5, 5]


def test_state_beyond_its_range_is_corrupt() -> None:
    # A 5-byte head can hold a state >= L * 2**16 = 2**36, which no encoder writes.
    schedule = make_schedule(
        np.random.default_rng(3), n_streams=1, n_symbols=300, freq_bits=20, max_len=50,
        zero_length=False,
    )
    payload = schedule.encode()[0]
    bad = payload[:4] + bytes([payload[4] | 0x80]) + payload[5:]
    got, decoder = schedule.decode([bad])
    assert ((got >= 0) & (got < 300)).all()
    with pytest.raises(CorruptInputError, match="stream 0"):
        decoder.finish()


def test_symbol_ranges_are_exclusive_cumulative_sums() -> None:
    rng = np.random.default_rng(7)
    tables = peaked_tables(rng, 50, 37, 14)
    symbols = rng.integers(0, 37, size=50)
    start, freq = symbol_ranges(tables, symbols)
    assert start.dtype == np.uint32 and freq.dtype == np.uint32
    cum = np.concatenate([np.zeros((50, 1), np.int64), np.cumsum(tables, axis=1)], axis=1)
    np.testing.assert_array_equal(start, cum[np.arange(50), symbols])
    np.testing.assert_array_equal(freq, tables[np.arange(50), symbols])
    empty = symbol_ranges(np.zeros((0, 4), np.uint32), np.zeros(0, np.int64))
    assert empty[0].shape == (0,) and empty[1].shape == (0,)


# --- size ------------------------------------------------------------------------------------


def test_overhead_on_a_megabyte_of_symbols_is_below_half_a_percent() -> None:
    # 2**20 symbols over B = 64 streams, 256-symbol peaked tables, symbols drawn from them.
    rng = np.random.default_rng(2024)
    n_streams, n_steps, freq_bits = 64, (1 << 20) // 64, 16
    pool = peaked_tables(rng, 1024, 256, freq_bits)
    which = rng.integers(0, len(pool), size=(n_steps, n_streams))
    symbols = sample(rng, pool, which)
    lengths = np.full(n_streams, n_steps)
    schedule = Schedule(pool, which, symbols, lengths, freq_bits)
    # (start, freq) straight from the pool: symbol_ranges over (2**20, 256) would take 1 GB.
    cum = np.cumsum(pool, axis=1, dtype=np.int64)
    freqs = pool[which, symbols].astype(np.int64)
    starts = cum[which, symbols] - freqs
    payloads = encode_streams(starts, freqs, lengths, freq_bits=freq_bits)
    ideal_bits = float(np.sum(freq_bits - np.log2(freqs.astype(np.float64))))
    actual_bits = 8 * sum(len(p) for p in payloads)
    assert actual_bits <= 1.005 * ideal_bits, (actual_bits, ideal_bits)
    got, decoder = schedule.decode(payloads)
    decoder.finish()
    np.testing.assert_array_equal(got, symbols)


# --- golden bitstream ------------------------------------------------------------------------


def golden_case(
    name: str, n_streams: int, n_symbols: int, freq_bits: int, lengths: list[int]
) -> tuple[Schedule, str]:
    """A schedule built by integer arithmetic from SHAKE-256 bytes alone (no numpy RNG, whose
    streams may change between versions), and the SHA-256 of its length-prefixed payloads."""
    max_len = max(lengths)
    total = 1 << freq_bits
    raw = hashlib.shake_256(f"tinyzip rans golden {name}".encode()).digest(
        2 * max_len * n_streams * (n_symbols + 1)
    )
    data = np.frombuffer(raw, dtype="<u2").astype(np.int64)
    weights = (data[: max_len * n_streams * n_symbols] % 1024) ** 2 + 1
    weights = weights.reshape(max_len * n_streams, n_symbols)
    pool = 1 + weights * (total - n_symbols) // weights.sum(axis=1, keepdims=True)
    pool[np.arange(len(pool)), weights.argmax(axis=1)] += total - pool.sum(axis=1)
    which = np.arange(max_len * n_streams).reshape(max_len, n_streams)
    symbols = data[max_len * n_streams * n_symbols :][: max_len * n_streams] % n_symbols
    schedule = Schedule(
        pool.astype(np.uint32),
        which,
        symbols.reshape(max_len, n_streams),
        np.array(lengths),
        freq_bits,
    )
    digest = hashlib.sha256()
    for payload in schedule.encode():
        digest.update(len(payload).to_bytes(4, "little") + payload)
    return schedule, digest.hexdigest()


GOLDEN_CASES = {
    "v256_k16_b5": (5, 256, 16, [300, 300, 120, 7, 0]),
    "v2_k12_b4": (4, 2, 12, [500, 499, 250, 1]),
    "v4096_k16_b2": (2, 4096, 16, [40, 13]),
}


def test_bitstream_matches_golden_hashes() -> None:
    hashes = {}
    for name, (n_streams, n_symbols, freq_bits, lengths) in GOLDEN_CASES.items():
        schedule, hashes[name] = golden_case(name, n_streams, n_symbols, freq_bits, lengths)
        roundtrip(schedule)
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    assert GOLDEN.exists(), f"{GOLDEN} is missing; regenerate with TINYZIP_REGEN_GOLDEN=1"
    assert json.loads(GOLDEN.read_text()) == hashes


# --- misuse ----------------------------------------------------------------------------------


def test_decoder_rejects_a_growing_active_set() -> None:
    table = np.array([[8, 8]], dtype=np.uint32)
    decoder = StreamDecoder([b"\0\0\1\0", b"\0\0\1\0"], freq_bits=4)
    decoder.decode(np.repeat(table, 1, axis=0))
    with pytest.raises(UsageError):
        decoder.decode(np.repeat(table, 2, axis=0))


@pytest.mark.parametrize("n_symbols", [2, 5])
def test_decoder_rejects_tables_not_summing_to_total(n_symbols: int) -> None:
    tables = np.ones((2, n_symbols), dtype=np.uint32)
    tables[:, 0] = 16 - n_symbols + 1
    tables[1, 1] += 1
    decoder = StreamDecoder([b"\0\0\1\0"] * 2, freq_bits=4)
    with pytest.raises(UsageError, match="row 1"):
        decoder.decode(tables)


@pytest.mark.parametrize(
    "tables",
    [np.array([[-1, 17]]), np.array([[-1, 1, 16]]), np.array([[8.0, 8.0]])],
    ids=["negative binary", "negative", "float"],
)
def test_decoder_rejects_tables_that_are_not_counts(tables: NDArray[np.generic]) -> None:
    decoder = StreamDecoder([b"\0\0\1\0"], freq_bits=4)
    with pytest.raises(UsageError):
        decoder.decode(tables)


def test_finished_decoder_refuses_reuse() -> None:
    decoder = StreamDecoder([b""], freq_bits=8)
    decoder.finish()
    with pytest.raises(UsageError):
        decoder.decode(np.array([[128, 128]], np.uint32))
    with pytest.raises(UsageError):
        decoder.finish()


@pytest.mark.parametrize("freq_bits", [0, MAX_FREQ_BITS + 1, 2.0])
def test_bad_freq_bits_are_rejected(freq_bits: int) -> None:
    with pytest.raises(UsageError):
        StreamDecoder([], freq_bits=freq_bits)
    with pytest.raises(UsageError):
        encode_streams(
            np.zeros((1, 1), int), np.ones((1, 1), int), np.ones(1, int), freq_bits=freq_bits
        )


@pytest.mark.parametrize(
    ("start", "freq", "length"),
    # empty range, range past M, length past T, floats
    [(0, 0, 1), (15, 2, 1), (0, 1, 2), (0.0, 1.0, 1), (0, 1, 1.0)],
)
def test_encoder_rejects_impossible_input(start: float, freq: float, length: float) -> None:
    with pytest.raises(UsageError):
        encode_streams(np.array([[start]]), np.array([[freq]]), np.array([length]), freq_bits=4)


def test_symbol_ranges_rejects_out_of_range_symbols() -> None:
    with pytest.raises(UsageError):
        symbol_ranges(np.array([[8, 8]], np.uint32), np.array([2]))


# --- corrupt payloads ------------------------------------------------------------------------


def corrupt_cases(payload: bytes) -> dict[str, bytes]:
    flipped_state = bytes([payload[0] ^ 0x10]) + payload[1:]
    flipped_word = payload[:-1] + bytes([payload[-1] ^ 0x01])
    return {
        "truncated word": payload[:-2],
        "truncated odd": payload[:-1],
        "truncated to state": payload[:4],
        "truncated inside state": payload[:3],
        "empty": b"",
        "extra word": payload + b"\x12\x34",
        "extra byte": payload + b"\x00",
        "flipped state bit": flipped_state,
        "flipped last word bit": flipped_word,
        "state below lower bound": b"\xff\xff\x00\x00" + payload[4:],
    }


def test_finish_detects_damaged_payloads() -> None:
    rng = np.random.default_rng(99)
    schedule = make_schedule(
        rng, n_streams=3, n_symbols=256, freq_bits=16, max_len=400, zero_length=False
    )
    payloads = schedule.encode()
    for name, bad in corrupt_cases(payloads[1]).items():
        damaged = [payloads[0], bad, payloads[2]]
        got, decoder = schedule.decode(damaged)
        assert ((got >= 0) & (got < 256) | (got == -1)).all()
        with pytest.raises(CorruptInputError, match="stream 1"):
            decoder.finish()
        # the undamaged streams still decode exactly
        np.testing.assert_array_equal(got[:, 0], schedule.expected()[:, 0], err_msg=name)


def test_finish_detects_reading_past_the_end_even_when_the_state_comes_out_right() -> None:
    # Table [1, 15], four 0s: payload = state 2**16 + the word 0x0000 (see the hand test).
    # Without its last word the decoder reads a zero in its place and ends at state L with
    # nothing left: only the over-read gives the damage away.
    tables = np.array([[1, 15]], dtype=np.uint32)
    decoder = StreamDecoder([bytes.fromhex("00000100")], freq_bits=4)
    for _ in range(4):
        assert decoder.decode(tables)[0] == 0
    with pytest.raises(CorruptInputError, match="read past the end"):
        decoder.finish()


def test_finish_rejects_a_state_below_the_lower_bound() -> None:
    # Initial state 1 < L: one step of the one-symbol table keeps x = 1, reads the word 0 and
    # lands on x = L with every word read; the encoder never writes such a payload.
    decoder = StreamDecoder([bytes.fromhex("010000000000")], freq_bits=16)
    assert decoder.decode(np.array([[1 << 16]], dtype=np.uint32))[0] == 0
    with pytest.raises(CorruptInputError, match="stream 0"):
        decoder.finish()


def test_finish_detects_a_payload_for_a_stream_never_decoded() -> None:
    decoder = StreamDecoder([b"\0\0\1\0", b"\0\0\1\0"], freq_bits=4)
    decoder.decode(np.array([[16]], dtype=np.uint32))  # stream 1 leaves at once
    with pytest.raises(CorruptInputError, match="stream 1"):
        decoder.finish()


def test_garbage_payloads_decode_to_valid_symbols_and_fail_finish() -> None:
    rng = np.random.default_rng(5)
    for n_symbols, freq_bits in ((2, 16), (3, 16), (256, 16), (256, 20), (3000, 20)):
        payloads = [rng.bytes(int(n)) for n in rng.integers(0, 200, size=16)]
        decoder = StreamDecoder(payloads, freq_bits=freq_bits)
        pool = peaked_tables(rng, 16, n_symbols, freq_bits)
        for t in range(2000):  # far past the ends of all payloads
            got = decoder.decode(pool[: 16 - t // 150])
            assert ((got >= 0) & (got < n_symbols)).all()
        with pytest.raises(CorruptInputError):
            decoder.finish()


# --- properties ------------------------------------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    n_symbols = draw(st.integers(1, 40))
    min_bits = max(1, (n_symbols - 1).bit_length())
    freq_bits = draw(st.integers(min_bits, MAX_FREQ_BITS))
    n_streams = draw(st.integers(1, 6))
    lengths = sorted(
        draw(st.lists(st.integers(0, 60), min_size=n_streams, max_size=n_streams)), reverse=True
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    max_len = max(lengths)
    n_pool = 8
    pool = peaked_tables(
        rng, n_pool, n_symbols, freq_bits, sharpness=draw(st.sampled_from([0.0, 1.0, 3.0, 8.0]))
    )
    which = rng.integers(0, n_pool, size=(max_len, n_streams))
    if draw(st.booleans()):
        symbols = sample(rng, pool, which)
    else:  # any symbol, likely or not
        symbols = rng.integers(0, n_symbols, size=(max_len, n_streams))
    return Schedule(pool, which, symbols, np.array(lengths, dtype=np.int64), freq_bits)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_property_roundtrip(schedule: Schedule) -> None:
    roundtrip(schedule)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules(), st.data())
def test_property_corruption_never_passes_silently(schedule: Schedule, data: st.DataObject) -> None:
    """A damaged payload decodes to valid symbols without crashing; finish() either raises
    CorruptInputError or the payloads are exactly the canonical encoding of the symbols
    returned (so nothing slipped through: the CRC of the container sees other data)."""
    payloads = schedule.encode()
    b = data.draw(st.integers(0, len(payloads) - 1))
    payload = bytearray(payloads[b])
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "replace"]))
    if kind == "flip" and payload:
        pos = data.draw(st.integers(0, len(payload) - 1))
        payload[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del payload[data.draw(st.integers(0, len(payload))) :]
    elif kind == "append":
        payload += data.draw(st.binary(min_size=1, max_size=5))
    else:
        payload = bytearray(data.draw(st.binary(max_size=40)))
    damaged = list(payloads)
    damaged[b] = bytes(payload)

    got, decoder = schedule.decode(damaged)
    n_symbols = schedule.pool.shape[1]
    active = got != -1
    assert ((got[active] >= 0) & (got[active] < n_symbols)).all()
    np.testing.assert_array_equal(active, schedule.expected() != -1)
    try:
        decoder.finish()
    except CorruptInputError:
        return
    assert schedule.encode(np.where(active, got, 0)) == damaged
