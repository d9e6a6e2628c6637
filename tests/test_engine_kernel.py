"""The compiled engine (model/_engine_kernel.c) against the numpy engine, table for table.

The numpy engine is the reference (its tables are pinned by tests/golden/engine.json);
the compiled one must give the same uint32 tables in step and parallel mode, for every
batch size, thread count and vocabulary, with its AVX2 code and with its plain C code.
The checkpoints are "trained-ish": random weights whose multipliers are rescaled so that
activations use the int8 range and attention is peaked for some heads and flat for others
(random_tensors alone gives mostly flat attention), so saturation, the clip at 0 of the
MLP, the exp table's zero tail and zero probabilities are all exercised (63-96% of the
keys in the window get probability 0, depending on the layer and the config).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import test_engine as te  # the engine tests' helpers (pytest puts tests/ on sys.path)
from tinyzip.model import engine as engine_mod
from tinyzip.model.checkpoint import (
    Checkpoint,
    byte_tokenizer_table,
    random_tensors,
    save_checkpoint,
)
from tinyzip.model.config import ModelConfig
from tinyzip.model.engine import Engine, compiled_available
from tinyzip.model.predictor import active_counts
from tinyzip.model.transformer_predictor import TransformerPredictor

pytestmark = pytest.mark.skipif(not compiled_available(),
                                reason="tinyzip.model._engine_kernel was not built")

TESTS = Path(__file__).parent
# small-like (head dim 24, the AVX2 24-wide path), odd head dim 9 (padding lanes), head
# dim 40 (the 32-wide path plus a tail), window longer and shorter than T; 4096 symbols
# with 20-bit tables (the head's reciprocal above 2**32, rANS states above 32 bits)
CONFIGS = {
    "small_like": ModelConfig(vocab_size=256, d_model=96, n_layers=2, n_heads=4, d_ff=160,
                              window=24),
    "odd_head": ModelConfig(vocab_size=256, d_model=36, n_layers=2, n_heads=4, d_ff=70,
                            window=11),
    "wide_head_bpe": ModelConfig(vocab_size=1024, d_model=80, n_layers=1, n_heads=2, d_ff=64,
                                 window=64),
    "bpe4096_fb20": ModelConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, d_ff=64,
                                window=16, freq_bits=20),
}
T = 50


def _trained_ish(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """random_tensors with multipliers scaled per layer (x1/4 .. x16, seeded): larger
    scores make some heads peaked (many zero probabilities), larger linears saturate."""
    t = random_tensors(config, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name in list(t):
        if name.endswith(".mult") and not name.startswith("tok_emb"):
            factor = float(2.0 ** rng.integers(-2, 5))
            m = t[name].astype(np.int64) * factor
            t[name] = np.clip(m, -(2**30) + 1, 2**30 - 1).astype(np.int32)
    return t


def _checkpoint(tmp: Path, name: str, seed: int = 5) -> Checkpoint:
    config = CONFIGS[name]
    if config.vocab_size == 256:
        table = byte_tokenizer_table()
    else:  # any partition of bytes will do: the engine never looks at the table
        table = [bytes([i]) for i in range(256)] + [
            bytes([i % 256, (i * 7) % 256]) for i in range(256, config.vocab_size)]
    return save_checkpoint(tmp / f"{name}.tzm", config=config,
                           tensors=_trained_ish(config, seed), tokenizer_table=table,
                           meta={"name": name})


def _tokens(b: int, v: int, t: int = T, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, v, size=(b, t))


def _compiled(ckpt: Checkpoint, *, simd: bool, threads: int = 1) -> Engine:
    engine = Engine(ckpt, compiled=True, threads=threads)
    engine._kernel = engine_mod._make_kernel(ckpt, simd=simd)
    return engine


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[Checkpoint, np.ndarray]:
    ckpt = _checkpoint(tmp_path_factory.mktemp("k"), request.param)
    tokens = _tokens(64, ckpt.config.vocab_size)
    return ckpt, Engine(ckpt, compiled=False).tables_parallel(tokens)


@pytest.mark.parametrize("simd", [True, False], ids=["simd", "plain_c"])
@pytest.mark.parametrize("b", [1, 7, 64])
def test_compiled_tables_equal_numpy_tables(case: tuple[Checkpoint, np.ndarray], b: int,
                                            simd: bool) -> None:
    ckpt, reference = case
    tokens = _tokens(64, ckpt.config.vocab_size)[:b]
    engine = _compiled(ckpt, simd=simd, threads=2)
    assert np.array_equal(engine.tables_parallel(tokens), reference[:b])
    assert np.array_equal(te._step_tables(engine, tokens), reference[:b])


def test_reference_tables_exercise_the_edge_cases(case: tuple[Checkpoint, np.ndarray]) -> None:
    ckpt, reference = case
    total = 2**ckpt.config.freq_bits
    assert np.all(reference.astype(np.int64).sum(axis=-1) == total)
    # confident and unsure rows both occur (the scaled head saturates some logits)
    top = reference.max(axis=-1)
    assert top.max() > total // 2 > top.min()


def test_numpy_step_mode_agrees_on_the_trained_ish_checkpoints(
        case: tuple[Checkpoint, np.ndarray]) -> None:
    ckpt, reference = case
    tokens = _tokens(64, ckpt.config.vocab_size)[:7]
    assert np.array_equal(te._step_tables(Engine(ckpt, compiled=False), tokens), reference[:7])


def test_long_sequences_wrap_the_ring_many_times(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "odd_head", seed=9)  # window 11, T = 150
    tokens = _tokens(5, 256, t=150, seed=4)
    reference = Engine(ckpt, compiled=False).tables_parallel(tokens)
    for simd in (True, False):
        engine = _compiled(ckpt, simd=simd)
        assert np.array_equal(te._step_tables(engine, tokens), reference)
        assert np.array_equal(engine.tables_parallel(tokens, chunk=40), reference)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_and_shrinking_batches_do_not_change_tables(
        case: tuple[Checkpoint, np.ndarray], threads: int) -> None:
    ckpt, reference = case
    tokens = _tokens(64, ckpt.config.vocab_size)[:13]
    engine = _compiled(ckpt, simd=True, threads=threads)
    engine.reset(13)
    inputs = np.full(13, engine.bos)
    for i in range(T):
        n = 13 if i < 20 else (9 if i < 35 else 2)  # streams finish, as in the coder
        assert np.array_equal(engine.step(inputs[:n]), reference[:n, i])
        inputs = tokens[:, i]


@pytest.mark.parametrize(("window", "t"), [(11, 600), (300, 700)])
def test_stream_pass_blocks_equal_one_pass(tmp_path: Path, window: int, t: int) -> None:
    """The compiled parallel pass runs 256 rows at a time with a sliding key window:
    windows shorter and longer than a block, sequences over several blocks."""
    config = ModelConfig(vocab_size=256, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                         window=window)
    ckpt = save_checkpoint(tmp_path / "w.tzm", config=config,
                           tensors=_trained_ish(config, 11),
                           tokenizer_table=byte_tokenizer_table(), meta={"name": "w"})
    tokens = _tokens(2, 256, t=t, seed=8)
    reference = Engine(ckpt, compiled=False).tables_parallel(tokens)
    for simd in (True, False):
        assert np.array_equal(_compiled(ckpt, simd=simd).tables_parallel(tokens), reference)
    # and the step mode past several ring wraps
    assert np.array_equal(te._step_tables(_compiled(ckpt, simd=True), tokens), reference)


def _frame(config_name: str, tmp: Path, dtype: type) -> tuple[Checkpoint, np.ndarray,
                                                              np.ndarray]:
    ckpt = _checkpoint(tmp, config_name, seed=6)
    lengths = np.array([300, 300, 299, 120, 120, 7, 1, 0], dtype=np.int64)  # non-increasing
    grid = _tokens(8, ckpt.config.vocab_size, t=300, seed=12).astype(dtype)
    for row, n in enumerate(lengths):
        grid[row, n:] = 0
    return ckpt, grid, lengths


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("config_name", "dtype"), [("small_like", np.uint8),
                                                     ("wide_head_bpe", np.uint16),
                                                     ("bpe4096_fb20", np.uint16)])
def test_compiled_frame_coding_equals_the_lockstep_loop(tmp_path: Path, config_name: str,
                                                        dtype: type, threads: int) -> None:
    from tinyzip.coder.frames import FrameEncoder
    from tinyzip.coder.rans import StreamDecoder

    ckpt, grid, lengths = _frame(config_name, tmp_path, dtype)
    reference = TransformerPredictor(ckpt, compiled=False)
    expected = FrameEncoder(reference)._lockstep_payloads(
        grid, active_counts(lengths, 0, grid.shape[1]), lengths, None)
    fast = TransformerPredictor(ckpt, compiled=True)
    fast.engine.threads = threads
    steps: list[int] = []
    assert fast.encode_frame(grid, lengths, lambda t, n: steps.append(t)) == expected
    assert steps and steps[-1] == grid.shape[1]
    assert reference.encode_frame(grid, lengths) is None  # numpy: the reference loop
    # decode the model rows; rows 1 and 4 are "known" (stored chunks): kept, stepped through
    rows = np.array([0, 2, 3, 5, 6, 7], dtype=np.int64)
    out = grid.copy()
    out[rows] = 0
    fb = ckpt.config.freq_bits
    decoder = StreamDecoder([expected[r] for r in rows], freq_bits=fb)
    fast.engine.threads = threads
    assert fast.decode_frame(out, lengths, rows, decoder)
    decoder.finish()  # every stream ended where its encoder started
    assert np.array_equal(out, grid)
    assert not reference.decode_frame(out, lengths, rows, StreamDecoder(
        [expected[r] for r in rows], freq_bits=fb))
    # a frame whose chunks are all known (zstd or stored): nothing to decode
    none = StreamDecoder([], freq_bits=fb)
    assert fast.decode_frame(out, lengths, np.zeros(0, dtype=np.int64), none)
    none.finish()
    assert np.array_equal(out, grid)


def test_compiled_decoder_survives_damaged_payloads(tmp_path: Path) -> None:
    from tinyzip.coder.rans import StreamDecoder

    from tinyzip.errors import CorruptInputError

    ckpt, grid, lengths = _frame("small_like", tmp_path, np.uint8)
    # (compiled=True: the whole-frame path this pins, also under TINYZIP_PURE_NUMPY=1)
    payloads = TransformerPredictor(ckpt, compiled=True).encode_frame(grid, lengths)
    assert payloads is not None
    rng = np.random.default_rng(0)
    damaged = [bytes(rng.integers(0, 256, size=len(p), dtype=np.uint8)) for p in payloads]
    damaged[1] = damaged[1][:3]  # malformed: shorter than the state
    out = np.zeros_like(grid)
    rows = np.arange(8, dtype=np.int64)
    decoder = StreamDecoder(damaged, freq_bits=16)
    assert TransformerPredictor(ckpt).decode_frame(out, lengths, rows, decoder)
    assert int(out.max()) < 256
    with pytest.raises(CorruptInputError):
        decoder.finish()


def test_golden_hash_holds_for_the_compiled_engine(tmp_path: Path) -> None:
    sys.path.insert(0, str(TESTS))
    import test_engine as te

    ckpt = te._tiny_checkpoint(tmp_path / "tiny.tzm")
    golden = __import__("json").loads(te.GOLDEN.read_text())["tables_sha256"]
    for simd in (True, False):
        engine = _compiled(ckpt, simd=simd)
        assert te._tables_hash(engine.tables_parallel(te._tokens(7))) == golden
        assert te._tables_hash(te._step_tables(engine, te._tokens(7))) == golden


def test_engine_uses_the_compiled_path_by_default_and_honours_pure_numpy(
        tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "odd_head")
    assert Engine(ckpt).compiled and not Engine(ckpt, compiled=False).compiled
    code = ("import sys; from tinyzip.model.checkpoint import load_checkpoint; "
            "from tinyzip.model.engine import Engine; "
            f"print(Engine(load_checkpoint({str(tmp_path / 'odd_head.tzm')!r})).compiled)")
    env = dict(os.environ, TINYZIP_PURE_NUMPY="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kernel_rejects_bad_arrays(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, "odd_head")
    engine = Engine(ckpt, compiled=True)
    kernel = engine._kernel
    engine.reset(2)
    k_cache, v_cache = engine._kv  # type: ignore[misc]
    out = np.empty((2, 256), dtype=np.uint32)
    with pytest.raises(ValueError):  # id above BOS
        kernel.step(np.array([0, 300]), 0, k_cache, v_cache, out)  # type: ignore[attr-defined]
    with pytest.raises(ValueError):  # more streams than the caches hold
        kernel.step(np.zeros(3, dtype=np.int64), 0, k_cache, v_cache,  # type: ignore[attr-defined]
                    np.empty((3, 256), dtype=np.uint32))
    with pytest.raises(ValueError):  # output of the wrong size
        kernel.forward(np.zeros((2, 4), dtype=np.int64), 4,  # type: ignore[attr-defined]
                       np.empty((2, 4, 255), dtype=np.uint32))
    with pytest.raises(ValueError):  # a packed model that does not add up
        engine_mod._engine_kernel.Kernel(np.zeros(10, dtype=np.int16),
                                         np.zeros(10, dtype=np.int64),
                                         np.zeros(5, dtype=np.int64))


GOLDEN_FB20 = TESTS / "golden" / "engine_bpe4096_fb20.json"


def test_golden_hashes_of_20_bit_tables_and_their_archive(tmp_path: Path) -> None:
    # 4096 symbols at freq_bits 20: tables (numpy, torch, compiled SIMD and plain, 1 and 2
    # threads, parallel and step mode) and the rANS payloads of a frame (states above 32 bits, two
    # words for rare symbols) are pinned.
    from tinyzip.coder.frames import FrameEncoder

    ckpt = _checkpoint(tmp_path, "bpe4096_fb20")
    tokens = _tokens(7, ckpt.config.vocab_size, t=40)
    digests = {te._tables_hash(Engine(ckpt, compiled=False).tables_parallel(tokens))}
    try:
        import torch  # noqa: F401  (the torch backend, where the train extra is installed)

        digests.add(te._tables_hash(
            Engine(ckpt, backend="torch", compiled=False).tables_parallel(tokens)))
    except ImportError:
        pass
    for simd in (True, False):
        for threads in (1, 2):
            engine = _compiled(ckpt, simd=simd, threads=threads)
            digests.add(te._tables_hash(engine.tables_parallel(tokens)))
            digests.add(te._tables_hash(te._step_tables(engine, tokens)))
    assert len(digests) == 1
    _, grid, lengths = _frame("bpe4096_fb20", tmp_path, np.uint16)
    # (compiled=True: the whole-frame path this pins, also under TINYZIP_PURE_NUMPY=1)
    payloads = TransformerPredictor(ckpt, compiled=True).encode_frame(grid, lengths)
    lockstep = FrameEncoder(TransformerPredictor(ckpt, compiled=False))._lockstep_payloads(
        grid, active_counts(lengths, 0, grid.shape[1]), lengths, None)
    assert payloads == lockstep
    got = {"tables_sha256": digests.pop(),
           "payloads_sha256": hashlib.sha256(b"".join(
               len(p).to_bytes(4, "little") + p for p in payloads)).hexdigest()}
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN_FB20.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN_FB20.read_text())
