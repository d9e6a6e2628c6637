"""The compiled kernel of the context-mixing predictor matches the numpy reference bit for bit.

Two predictors, one running model/_cm_kernel.c and one the numpy code of
model/context_mix.py, go through the same lockstep calls; every emitted table, the shared
tables and every per-stream state array must be identical.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinyzip.model import context_mix
from tinyzip.model.context_mix import ContextMixPredictor

pytestmark = pytest.mark.skipif(
    context_mix._cm_kernel is None, reason="the C kernel tinyzip.model._cm_kernel was not built"
)

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "loghub"
# Small tables: collisions and shared entries are frequent, which is what must match.
SMALL: dict[str, Any] = {"table_bits": 12, "history_bits": 12, "match_hash_bits": 10}
# Per-stream arrays whose values are part of the state (scratch buffers are not compared).
STATE = (
    "_c0 _c0n _h8 _wordh _pword _col _field _line _pline _above _hist _mtab _mlen _mptr _mok"
    " _tmpl _ptmpl _cfields _pfields _ftab _tfs _tab _ttab _tks _tkc _tob _tabcmp _tokcmp"
    " _toksep _tokdiffs _ktab _kvc _kvb _kvcmp _ind1 _ind4 _align _misses"
    " _vtab _ntab _nval _nkey _nfs _nb _ncmp _text _vtab2 _ntab2 _next2 _lhead _blank"
).split()


def loghub(name: str, start: int, n_bytes: int) -> bytes:
    path = LOGHUB / name
    if not path.is_file():
        pytest.skip(f"corpus file {path} is missing")
    return path.read_bytes()[start : start + n_bytes]


def cut(data: bytes, n_streams: int, seed: int) -> list[bytes]:
    """``n_streams`` chunks of unequal lengths (some maybe empty), longest first."""
    rng = random.Random(seed)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(n_streams - 1))
    bounds = [0, *cuts, len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    return sorted(chunks, key=len, reverse=True)


def lockstep_compare(
    a: ContextMixPredictor, b: ContextMixPredictor, streams: list[bytes], setup: Any = None
) -> None:
    """One frame through both predictors; tables compared at every step, state at the end.

    ``setup(predictor)`` runs after ``begin`` (to give external tables)."""
    assert a.compiled and not b.compiled
    syms = [a.to_symbols(s) for s in streams]
    lens = np.array([len(s) for s in syms], dtype=np.int64)
    steps = int(lens.max(initial=0))
    grid = np.zeros((len(syms), steps), dtype=np.uint8)
    for i, s in enumerate(syms):
        grid[i, : len(s)] = s
    a.begin(len(streams))
    b.begin(len(streams))
    if setup is not None:
        setup(a)
        setup(b)
    for t in range(steps):
        n = int(np.count_nonzero(lens > t))
        ta, tb = a.predict(n), b.predict(n)
        if not np.array_equal(ta, tb):
            rows = np.flatnonzero((ta != tb).any(axis=1))
            pytest.fail(f"tables differ at step {t} (byte {t // 8}, bit {t % 8}), rows {rows}")
        a.update(grid[:n, t])
        b.update(grid[:n, t])
    assert a.state_digest() == b.state_digest()
    for name in STATE:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert (a._step, a._bit) == (b._step, b._bit)


def pair(**kw: Any) -> tuple[ContextMixPredictor, ContextMixPredictor]:
    return ContextMixPredictor(compiled=True, **kw), ContextMixPredictor(compiled=False, **kw)


INPUTS = {
    "hdfs": lambda n: loghub("HDFS_2k.log", 1000, n),
    "linux": lambda n: loghub("Linux_2k.log", 50_000, n),
    "random": lambda n: random.Random(7).randbytes(n),
    "all_values": lambda n: (bytes(range(256)) + bytes(range(255, -1, -1))) * (n // 512 + 1),
    # a list, then the list again with a prefix before every item (the align pointer)
    "inserted": lambda n: (
        b"; ".join(b"id%d=%s" % (i, b"ab" * (i % 5)) for i in range(n // 12))
        + b"\n"
        + b"; ".join(b"[x] id%d=%s" % (i, b"ab" * (i % 5)) for i in range(n // 12))
    ),
    # lines of 80 one-digit fields (past MAX_FIELD), their values in a repeating order
    "wide_lines": lambda n: b"\n".join(
        b" ".join(b"%d" % ((i * 3 + j) % 10) for j in range(80)) for i in range(n // 160 + 1)
    ),
    # javac's errors: a line of code indented by tabs, then blanks mirroring its tabs up to
    # a caret (blankpos)
    "carets": lambda n: b"".join(
        b"E.java:%d: error\n\t\tint x%d = f(a,\tb);\n\t\t%s^\n" % (i, i, b" " * (i % 9))
        for i in range(n // 30 + 1)
    ),
    "runs": lambda n: (
        (b"\x00" * 300 + b"\xff" * 200 + b"\n" * 50 + b" " * 50 + b"a" * 400) * (n // 1000 + 1)
    ),
}
# Bytes per B: the numpy reference costs ~0.2 ms per step whatever B is.
SIZES = {1: 300, 7: 1200, 64: 5000}


@pytest.mark.parametrize("n_streams", sorted(SIZES))
@pytest.mark.parametrize("name", sorted(INPUTS))
def test_kernel_matches_numpy_table_for_table(name: str, n_streams: int) -> None:
    data = INPUTS[name](SIZES[n_streams])[: SIZES[n_streams]]
    a, b = pair(**SMALL)
    # Two frames: the shared tables carry over and the kernel is rebound by begin.
    lockstep_compare(a, b, cut(data, n_streams, seed=n_streams))
    lockstep_compare(a, b, cut(data[: len(data) // 2], n_streams, seed=n_streams + 1))


@pytest.mark.parametrize("level", [1, 2])
def test_kernel_matches_numpy_at_other_levels_and_default_tables(level: int) -> None:
    a, b = pair(level=level, match_min=4 + level)
    lockstep_compare(a, b, cut(loghub("Apache_2k.log", 0, 4000), 16, seed=level))


@pytest.mark.parametrize("mixer_contexts", [(), ("match",), ("column", "above")])
def test_kernel_matches_numpy_with_other_mixer_selectors(mixer_contexts: tuple[str, ...]) -> None:
    # The default (all selectors) runs in every other test; these are subsets, and the
    # empty one is how archives made before the extra weight sets decode.
    a, b = pair(**SMALL, mixer_contexts=mixer_contexts)
    lockstep_compare(a, b, cut(loghub("Mac_2k.log", 2000, 2000), 5, seed=3))


def test_kernel_matches_numpy_with_the_tabove_selector_alone() -> None:
    # The field table kept up for the selector without the tmplabove context (level 2),
    # beside the selector it replaces by default.
    a, b = pair(**SMALL, level=2, mixer_contexts=("above", "tabove"))
    assert a._uses_ftab and "tmplabove" not in a.contexts
    lockstep_compare(a, b, cut(loghub("OpenStack_2k.log", 0, 3000), 7, seed=4))


def test_kernel_matches_numpy_with_external_input() -> None:
    # Tables of every shape the transformer could give, and some no model would: zero
    # rows (P = 1/2), one huge entry, all ones.
    rng = np.random.default_rng(5)
    streams = cut(loghub("Linux_2k.log", 7000, 1600), 4, seed=9)
    longest = max(len(s) for s in streams)
    tables = rng.integers(0, 2000, size=(4, longest, 256))
    tables[:, ::7] = 0
    tables[:, 3::11] = 1
    tables[:, 5::13, 97] = 1 << 30
    a, b = pair(**SMALL, external_input=True)
    lockstep_compare(a, b, streams, setup=lambda p: p.set_external(tables, 0))
    # ... and it does change the predictions
    c = ContextMixPredictor(compiled=True, **SMALL)
    c.begin(4)
    a.begin(4)
    a.set_external(tables, 0)
    differ = False
    for _ in range(16):
        differ |= not np.array_equal(c.predict(4), a.predict(4))
        c.update(np.zeros(4, dtype=np.int64))
        a.update(np.zeros(4, dtype=np.int64))
    assert differ


def test_external_input_needs_its_tables() -> None:
    for compiled in (True, False):
        pred = ContextMixPredictor(compiled=compiled, external_input=True, **SMALL)
        pred.begin(2)
        with pytest.raises(ValueError, match="external table"):
            pred.predict(2)
        pred.set_external(np.ones((2, 1, 256), dtype=np.int64), 0)
        pred.predict(2)
        with pytest.raises(ValueError, match="tables must be"):
            pred.set_external(np.ones((3, 1, 256), dtype=np.int64), 0)
        for bad in (-1, 1 << 32):
            with pytest.raises(ValueError, match="entries"):
                pred.set_external(np.full((2, 1, 256), bad, dtype=np.int64), 0)
    with pytest.raises(ValueError, match="no external input"):
        ContextMixPredictor(**SMALL).set_external(np.ones((1, 1, 256)), 0)


def test_kernel_matches_numpy_after_reset() -> None:
    a, b = pair(**SMALL, contexts=("o2", "word", "field"), match_min=8, mixer_shift=6)
    data = loghub("HPC_2k.log", 3000, 1500)
    lockstep_compare(a, b, cut(data, 5, seed=1))
    a.reset()
    b.reset()
    lockstep_compare(a, b, cut(data, 9, seed=2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    streams=st.lists(st.binary(max_size=48), min_size=1, max_size=6),
    level=st.sampled_from([1, 2, 3]),
    match_min=st.integers(2, 8),
    counter_limit=st.sampled_from([1, 30, 255]),
)
def test_kernel_matches_numpy_on_small_random_inputs(
    streams: list[bytes], level: int, match_min: int, counter_limit: int
) -> None:
    streams = sorted(streams, key=len, reverse=True)
    a, b = pair(**SMALL, level=level, match_min=match_min, counter_limit=counter_limit)
    lockstep_compare(a, b, streams)


def test_kernel_rejects_symbols_that_are_not_bits() -> None:
    pred = ContextMixPredictor(compiled=True, **SMALL)
    pred.begin(2)
    pred.predict(2)
    with pytest.raises(ValueError, match="bits"):
        pred.update(np.array([0, 2]))


def test_pure_numpy_environment_variable_disables_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TINYZIP_PURE_NUMPY", "1")
    assert not ContextMixPredictor(**SMALL).compiled
    monkeypatch.delenv("TINYZIP_PURE_NUMPY")
    assert ContextMixPredictor(**SMALL).compiled


_ROUNDTRIP = """
import hashlib, sys, tinyzip
data = open(sys.argv[1], "rb").read()[2000:3200]
blob = tinyzip.compress(data, model="cm")
if sys.argv[2] == "0":  # the numpy reference only encodes: it costs 0.2 ms per bit
    assert tinyzip.decompress(blob) == data
print(hashlib.sha256(blob).hexdigest())
"""


def test_archives_are_identical_with_and_without_the_kernel() -> None:
    path = LOGHUB / "Mac_2k.log"
    if not path.is_file():
        pytest.skip(f"corpus file {path} is missing")
    digests = {}
    for pure in ("0", "1"):
        env = {**os.environ, "TINYZIP_PURE_NUMPY": pure}
        out = subprocess.run(
            [sys.executable, "-c", _ROUNDTRIP, str(path), pure],
            env=env, capture_output=True, text=True, check=True, timeout=300,
        )  # fmt: skip
        digests[pure] = out.stdout.strip()
    assert digests["0"] == digests["1"]
    assert len(digests["0"]) == len(hashlib.sha256().hexdigest())


# ------------------------------------------------- the compiled whole-frame loops


def frame_grid(streams: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """(B, T) bit grid of streams sorted longest first, and each row's bit count."""
    bits = [np.unpackbits(np.frombuffer(s, dtype=np.uint8)) for s in streams]
    lens = np.array([len(b) for b in bits], dtype=np.int64)
    grid = np.zeros((len(bits), int(lens.max(initial=0))), dtype=np.uint8)
    for i, b in enumerate(bits):
        grid[i, : len(b)] = b
    return grid, lens


@pytest.mark.parametrize("n_streams", [1, 3, 8])
def test_compiled_frame_loop_gives_the_reference_payloads(n_streams: int) -> None:
    from tinyzip.coder.frames import FrameEncoder
    from tinyzip.model.predictor import active_counts

    data = loghub("Linux_2k.log", 10_000, 6000)
    streams = cut(data, n_streams, seed=n_streams)
    grid, lens = frame_grid(streams)
    active = active_counts(lens, 0, grid.shape[1])
    fast, ref = ContextMixPredictor(**SMALL), ContextMixPredictor(**SMALL)
    for _ in range(2):  # two frames: the shared tables carry over
        got = fast.encode_frame(grid, lens)
        want = FrameEncoder(ref)._lockstep_payloads(grid, active, lens, None)
        assert got == want
        assert fast.state_digest() == ref.state_digest()
        for name in STATE:
            assert np.array_equal(getattr(fast, name), getattr(ref, name)), name


def test_compiled_frame_loop_rejects_lengths_that_break_the_protocol() -> None:
    pred = ContextMixPredictor(**SMALL)
    grid = np.zeros((2, 16), dtype=np.uint8)
    for bad in ([8, 16], [16, 4], [16], [24, 8]):  # growing, not whole bytes, count, > T
        with pytest.raises(ValueError):
            pred.encode_frame(grid, np.array(bad))


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 300), min_size=1, max_size=5),
    seed=st.integers(0, 2**32 - 1),
)
def test_compiled_binary_rans_matches_the_numpy_coder(lengths: list[int], seed: int) -> None:
    from tinyzip.coder.rans import StreamDecoder, encode_streams

    rng = np.random.default_rng(seed)
    lens = np.array(sorted(lengths, reverse=True), dtype=np.int64)
    steps = int(lens[0])
    # Probabilities anywhere in [1, 65535], skewed ones included.
    p16 = rng.choice([1, 2, 4, 100, 32768, 65000, 65535], size=(steps, len(lens)))
    p16 = np.where(rng.random((steps, len(lens))) < 0.5, p16, rng.integers(1, 65536, p16.shape))
    p16 = p16.astype(np.uint16)
    grid = (rng.random((len(lens), steps)) < p16.T / 65536).astype(np.uint8)
    got = context_mix._cm_kernel.encode_binary(p16, grid, lens, steps)
    y = grid.T.astype(np.int64)
    starts = np.where(y == 1, 65536 - p16.astype(np.int64), 0)
    freqs = np.where(y == 1, p16.astype(np.int64), 65536 - p16.astype(np.int64))
    assert got == encode_streams(starts, freqs, lens, freq_bits=16)
    # ... and StreamDecoder reads them back.
    dec = StreamDecoder(got, freq_bits=16)
    for t in range(steps):
        k = int(np.count_nonzero(lens > t))
        tables = np.stack([65536 - p16[t, :k].astype(np.int64), p16[t, :k]], axis=1)
        assert np.array_equal(dec.decode(tables.astype(np.uint32)), grid[:k, t])
    dec.finish()


@pytest.mark.parametrize("n_streams", [1, 4])
def test_compiled_decoder_reads_the_frame_and_rejects_damage(n_streams: int) -> None:
    from tinyzip.coder.container import ChunkMode
    from tinyzip.coder.frames import FrameDecoder, FrameEncoder, FramePolicy

    from tinyzip.errors import CorruptInputError

    data = loghub("HDFS_2k.log", 0, 16_000)
    policy = FramePolicy(max_streams=n_streams, min_stream_bytes=1000)
    header, payloads = FrameEncoder(ContextMixPredictor(**SMALL), policy).encode_parts(data)
    m = [i for i, c in enumerate(header.chunks) if c.mode == ChunkMode.MODEL][-1]
    for compiled in (True, False):
        dec = FrameDecoder(ContextMixPredictor(**SMALL, compiled=compiled))
        if compiled or n_streams > 1:  # the reference decodes one stream at ~1 KB/s
            assert dec.decode(header, payloads) == data
    damaged = list(payloads)
    damaged[m] = damaged[m][:9] + bytes([damaged[m][9] ^ 0x10]) + damaged[m][10:]
    with pytest.raises(CorruptInputError):
        FrameDecoder(ContextMixPredictor(**SMALL)).decode(header, damaged)
    damaged[m] = payloads[m][:-2]  # truncated: words missing
    with pytest.raises(CorruptInputError):
        FrameDecoder(ContextMixPredictor(**SMALL)).decode(header, damaged)
