"""The integer engine: golden tables, mode/batch/thread independence, checkpoint checks.

Numpy only: the tiny checkpoint is built from a seeded numpy RNG (random int8 weights,
integer multipliers) through save_checkpoint, so no torch is needed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from tinyzip.model.checkpoint import (
    META_KEY,
    Checkpoint,
    byte_tokenizer_table,
    load_checkpoint,
    random_tensors,
    save_checkpoint,
)
from tinyzip.model.config import ModelConfig
from tinyzip.model.engine import Engine, isqrt
from tinyzip.model.transformer_predictor import TransformerPredictor

from tinyzip.errors import CheckpointError, UsageError

GOLDEN = Path(__file__).parent / "golden" / "engine.json"
MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
# window 16 < T = 40: the parallel pass needs several query blocks and the step mode's
# ring buffer wraps, so both window mechanisms are exercised.
TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, window=16)
SEED = 1234
T = 40


def _tiny_checkpoint(path: Path) -> Checkpoint:
    return save_checkpoint(path, config=TINY, tensors=random_tensors(TINY, seed=SEED),
                           tokenizer_table=byte_tokenizer_table(), meta={"name": "tiny-test"})


def _tokens(b: int, t: int = T) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(b, t))


def _tables_hash(tables: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tables, dtype="<u4").tobytes()).hexdigest()


def _step_tables(engine: Engine, tokens: np.ndarray) -> np.ndarray:
    b, t = tokens.shape
    engine.reset(b)
    inputs = np.full(b, engine.bos)
    rows = []
    for i in range(t):
        rows.append(engine.step(inputs))
        inputs = tokens[:, i]
    return np.stack(rows, axis=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Checkpoint:
    return _tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.tzm")


@pytest.fixture(scope="module")
def tables_b7(tiny: Checkpoint) -> np.ndarray:
    # the numpy engine is the reference (the compiled one: tests/test_engine_kernel.py)
    return Engine(tiny, compiled=False).tables_parallel(_tokens(7))


def test_engine_tables_match_golden_hash(tables_b7: np.ndarray) -> None:
    digest = _tables_hash(tables_b7)
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({
            "what": "SHA-256 of Engine.tables_parallel as little-endian uint32 for the tiny "
                    "random checkpoint of tests/test_engine.py",
            "config": TINY.to_dict(), "seed": SEED, "tokens": [7, T],
            "tables_sha256": digest}, indent=2) + "\n")
    assert digest == json.loads(GOLDEN.read_text())["tables_sha256"]


def test_tables_are_valid_frequency_tables(tables_b7: np.ndarray) -> None:
    assert tables_b7.dtype == np.uint32 and tables_b7.shape == (7, T, 256)
    assert np.all(tables_b7.astype(np.int64).sum(axis=-1) == 2**16)
    assert tables_b7.min() >= 1
    # random weights still give a non-trivial distribution (not all mass on one symbol)
    assert 1 < len(np.unique(tables_b7[0, 5])) and tables_b7.max() < 2**16 - 255


@pytest.mark.parametrize("compiled", [False, True], ids=["numpy", "default"])
@pytest.mark.parametrize("b", [1, 7, 64])
def test_step_mode_equals_parallel_mode(tiny: Checkpoint, tables_b7: np.ndarray, b: int,
                                        compiled: bool) -> None:
    engine = Engine(tiny, compiled=None if compiled else False)
    tokens = _tokens(b)  # the seeded RNG fills rows in order: the first rows agree for all b
    parallel = engine.tables_parallel(tokens)
    assert np.array_equal(parallel, _step_tables(engine, tokens))
    # a stream's tables do not depend on the batch it runs in
    common = min(b, 7)
    assert np.array_equal(parallel[:common], tables_b7[:common])


def test_stream_tables_do_not_depend_on_batch_neighbours(tiny: Checkpoint) -> None:
    tokens = _tokens(64)
    alone = Engine(tiny).tables_parallel(tokens[5:6])
    assert np.array_equal(Engine(tiny).tables_parallel(tokens)[5:6], alone)


def test_step_mode_with_shrinking_active_streams(tiny: Checkpoint) -> None:
    engine = Engine(tiny)
    tokens = _tokens(7)
    full = engine.tables_parallel(tokens)
    engine.reset(7)
    inputs = np.full(7, engine.bos)
    for i in range(T):
        n = 7 if i < 20 else 3  # streams 3..6 finish after 20 symbols
        assert np.array_equal(engine.step(inputs[:n]), full[:n, i])
        inputs = tokens[:, i]


def test_parallel_mode_handles_sequences_shorter_than_window(tiny: Checkpoint) -> None:
    engine = Engine(tiny)
    tokens = _tokens(3, 5)
    assert np.array_equal(engine.tables_parallel(tokens), _step_tables(engine, tokens))


_THREAD_SCRIPT = """
import sys, hashlib, numpy as np
from pathlib import Path
sys.path.insert(0, {tests!r})
import test_engine as te
ckpt = te._tiny_checkpoint(Path({path!r}))
print(te._tables_hash(te.Engine(ckpt).tables_parallel(te._tokens(64))))
"""


def test_tables_do_not_depend_on_thread_count(tmp_path: Path) -> None:
    digests = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   MKL_NUM_THREADS=threads)
        script = _THREAD_SCRIPT.format(tests=str(Path(__file__).parent),
                                       path=str(tmp_path / f"t{threads}.tzm"))
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, check=True)
        digests.append(out.stdout.strip())
    assert digests[0] == digests[1] and len(digests[0]) == 64


def test_engine_source_has_no_float_transcendental() -> None:
    forbidden = re.compile(
        r"\b(np|numpy|math|torch|scipy)\.(exp|exp2|expm1|log|log2|log10|log1p|tanh|sinh|"
        r"cosh|sin|cos|tan|sqrt|rsqrt|cbrt|power|pow|float_power|erf|sigmoid|softmax|"
        r"frexp|ldexp)\b")
    for name in ("engine.py", "transformer_predictor.py"):
        source = (MODEL_DIR / name).read_text()
        assert not forbidden.findall(source), name


def test_engine_import_does_not_load_torch() -> None:
    code = ("import sys, tinyzip.model.engine, tinyzip.model.transformer_predictor; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_isqrt_is_floor_of_square_root() -> None:
    edge = [1, 2, 3, 4, 15, 16, 17, 2**31 - 1, 2**32, 2**40 - 1, 2**62 - 1, 2**62]
    edge += [k * k for k in (3, 1000, 2**20 + 7)] + [k * k - 1 for k in (3, 1000, 2**29)]
    rand = np.random.default_rng(0).integers(1, 2**62, size=2000).tolist()
    values = np.array(edge + rand, dtype=np.int64)  # > _SCALAR_ISQRT_MAX: Newton path
    expected = [math.isqrt(v) for v in values.tolist()]
    assert isqrt(values).tolist() == expected
    assert isqrt(values[:100]).tolist() == expected[:100]  # math.isqrt path


def test_predictor_tables_equal_engine_tables(tmp_path: Path, tables_b7: np.ndarray
                                              ) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "p.tzm")
    predictor = TransformerPredictor(ckpt)
    assert predictor.model_id == hashlib.sha256((tmp_path / "p.tzm").read_bytes()).digest()
    # the id travels in the archive header, not twice
    assert predictor.descriptor() == {"name": "transformer", "name_hint": "tiny-test"}
    assert predictor.n_symbols == 256 and predictor.freq_bits == 16
    tokens = _tokens(7)
    predictor.begin(7)
    for i in range(T):
        assert np.array_equal(predictor.predict(7), tables_b7[:, i])
        predictor.update(tokens[:, i])
    raw = b"hello\x00\xff"
    assert predictor.from_symbols(predictor.to_symbols(raw)) == raw


def test_predictor_rejects_predict_without_update(tiny: Checkpoint) -> None:
    predictor = TransformerPredictor(tiny)
    predictor.begin(2)
    predictor.predict(2)
    with pytest.raises(UsageError):
        predictor.predict(2)


def test_checkpoint_roundtrip_keeps_config_tokenizer_and_name(tmp_path: Path) -> None:
    ckpt = _tiny_checkpoint(tmp_path / "a.tzm")
    again = load_checkpoint(tmp_path / "a.tzm")
    assert again.config == TINY and again.name == "tiny-test"
    assert again.tokenizer_table == tuple(byte_tokenizer_table())
    assert again.model_id == ckpt.model_id
    assert again.model_id == hashlib.sha256((tmp_path / "a.tzm").read_bytes()).digest()


def _rewrite(src: Path, dst: Path, *, tensors: dict[str, np.ndarray] | None = None,
             meta: dict[str, object] | None = None) -> Path:
    blob = src.read_bytes()
    loaded = dict(st_load(blob))
    header = json.loads(blob[8:8 + int.from_bytes(blob[:8], "little")])
    meta_all = json.loads(header["__metadata__"][META_KEY])
    loaded.update(tensors or {})
    meta_all.update(meta or {})
    for k in [k for k, v in loaded.items() if v is None]:
        del loaded[k]
    dst.write_bytes(st_save(loaded, metadata={META_KEY: json.dumps(meta_all)}))
    return dst


@pytest.mark.parametrize("damage", [
    "missing_file", "garbage", "truncated", "not_tinyzip", "wrong_version", "missing_tensor",
    "wrong_shape", "wrong_dtype", "int8_minus_128", "bad_lut", "bad_shift", "bad_config",
    "bad_tokenizer",
])
def test_bad_checkpoint_raises_checkpoint_error(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.tzm"
    _tiny_checkpoint(good)
    bad = tmp_path / "bad.tzm"
    w = "blocks.0.attn.qkv.weight"
    if damage == "missing_file":
        bad = tmp_path / "nope.tzm"
    elif damage == "garbage":
        bad.write_bytes(b"\x00" * 7 + b"not a checkpoint")
    elif damage == "truncated":
        bad.write_bytes(good.read_bytes()[:-100])
    elif damage == "not_tinyzip":
        bad.write_bytes(st_save({"x": np.zeros(3, dtype=np.int8)}))
    elif damage == "wrong_version":
        _rewrite(good, bad, meta={"format_version": 999})
    elif damage == "missing_tensor":
        _rewrite(good, bad, tensors={w: None})  # type: ignore[dict-item]
    elif damage == "wrong_shape":
        _rewrite(good, bad, tensors={w: np.zeros((3, 3), dtype=np.int8)})
    elif damage == "wrong_dtype":
        _rewrite(good, bad, tensors={w: np.zeros((96, 32), dtype=np.int16)})
    elif damage == "int8_minus_128":
        _rewrite(good, bad, tensors={w: np.full((96, 32), -128, dtype=np.int8)})
    elif damage == "bad_lut":
        lut = random_tensors(TINY, seed=0)["exp_lut"].copy()
        lut[-1] = 5
        _rewrite(good, bad, tensors={"exp_lut": lut})
    elif damage == "bad_shift":
        _rewrite(good, bad, tensors={"head.shift": np.array([0], dtype=np.int32)})
    elif damage == "bad_config":
        _rewrite(good, bad, meta={"config": {**TINY.to_dict(), "n_heads": 3}})
    elif damage == "bad_tokenizer":
        _rewrite(good, bad, tensors={"tokenizer.offsets": np.zeros(257, dtype=np.int32)})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert "\n" not in str(info.value)


def test_step_rejects_out_of_range_ids(tiny: Checkpoint) -> None:
    engine = Engine(tiny)
    engine.reset(2)
    with pytest.raises(UsageError):
        engine.step(np.array([0, 257]))
    with pytest.raises(UsageError):
        engine.tables_parallel(np.array([[256]]))


def test_predictor_codes_bpe_tokens_with_the_checkpoint_tokenizer(tmp_path: Path) -> None:
    pytest.importorskip("tokenizers")
    from tinyzip.data.tokenizer import BpeTokenizer

    text = b"GET /index.html 200\nGET /api/v1 404\nPOST /api/v1 200\n" * 50
    tokenizer = BpeTokenizer.train([text], vocab_size=512)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_layers=1, n_heads=2,
                         d_ff=64, window=16)
    save_checkpoint(tmp_path / "bpe.tzm", config=config,
                    tensors=random_tensors(config, seed=2),
                    tokenizer_table=tokenizer.id_to_bytes(),
                    meta={"tokenizer": tokenizer.checkpoint_spec()})
    predictor = TransformerPredictor(load_checkpoint(tmp_path / "bpe.tzm"))
    raw = b"GET /api/v1 200\n\xff odd bytes\x00"
    symbols = predictor.to_symbols(raw)
    assert len(symbols) < len(raw) and int(symbols.max()) < config.vocab_size
    assert predictor.from_symbols(symbols) == raw
    predictor.begin(1)
    tables = predictor.predict(1)
    assert tables.shape == (1, config.vocab_size) and int(tables.sum()) == 2**16


def test_info_prints_the_card(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tinyzip.model.info import main

    ckpt = _tiny_checkpoint(tmp_path / "tiny.tzm")
    assert main([str(tmp_path / "tiny.tzm")]) == 0
    text = capsys.readouterr().out
    assert "tiny-test" in text and ckpt.model_id.hex() in text and "not measured" in text
    assert main([str(tmp_path / "tiny.tzm"), "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["model_id"] == ckpt.model_id.hex() and card["config"] == TINY.to_dict()
    with pytest.raises(CheckpointError):
        main([str(tmp_path / "missing.tzm")])
    with pytest.raises(UsageError):
        main([])


def test_empty_batches_and_sequences_give_empty_tables(tiny: Checkpoint) -> None:
    engine = Engine(tiny)
    assert engine.tables_parallel(np.zeros((0, 5), dtype=np.int64)).shape == (0, 5, 256)
    assert engine.tables_parallel(np.zeros((2, 0), dtype=np.int64)).shape == (2, 0, 256)
    engine.reset(3)
    assert engine.step(np.zeros(0, dtype=np.int64)).shape == (0, 256)


def test_chunked_parallel_mode_equals_one_pass(tiny: Checkpoint, tables_b7: np.ndarray
                                               ) -> None:
    engine = Engine(tiny)
    # receptive field 2 * 15 = 30 > chunk: every chunk re-reads context from earlier ones
    for chunk in (7, 16, 39):
        assert np.array_equal(engine.tables_parallel(_tokens(7), chunk=chunk), tables_b7)


def test_predictor_tables_for_streams_equal_lockstep_tables(tiny: Checkpoint) -> None:
    predictor = TransformerPredictor(tiny)
    tokens = _tokens(5)
    lengths = [40, 33, 33, 7, 0]  # sorted by non-increasing length, as the coder does
    streams = [tokens[i, :n] for i, n in enumerate(lengths)]
    all_at_once = predictor.tables_for_streams(streams, max_tokens=64)
    predictor.begin(5)
    for t in range(max(lengths)):
        n_active = sum(n > t for n in lengths)
        tables = predictor.predict(n_active)
        for i in range(n_active):
            assert np.array_equal(tables[i], all_at_once[i][t])
        predictor.update(np.array([streams[i][t] for i in range(n_active)]))
    assert [len(x) for x in all_at_once] == lengths


@pytest.mark.parametrize(("preset", "low", "high"), [
    ("tiny", 40_000, 70_000), ("small", 200_000, 320_000), ("base", 850_000, 1_150_000)])
def test_presets_have_their_advertised_sizes(preset: str, low: int, high: int) -> None:
    config = ModelConfig.preset(preset)
    assert low <= config.n_params <= high
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(("change", "flag"), [
    ({"n_heads": 3}, "--n-heads"), ({"d_model": 30, "n_heads": 4}, "--d-model"),
    ({"d_ff": 2048}, "--d-ff"), ({"d_model": 2048, "n_heads": 8}, "--d-model"),
    ({"window": 0}, "--window"), ({"vocab_size": 40000}, "--vocab-size"),
])
def test_config_rejects_bad_values_in_flag_words(change: dict[str, int], flag: str) -> None:
    with pytest.raises(ValueError, match=flag):
        ModelConfig(**{**TINY.to_dict(), **change})


@pytest.mark.parametrize(("vocab", "bits"), [(256, 16), (512, 17), (1024, 18), (4096, 20),
                                             (8192, 20)])
def test_presets_scale_table_precision_with_the_vocabulary(vocab: int, bits: int) -> None:
    # the one-count floor of every symbol stays near 1/256 of the mass (docs/coder.md)
    config = ModelConfig.preset("tiny", vocab_size=vocab)
    assert config.freq_bits == bits
    assert vocab / 2**config.freq_bits <= 1 / 256 or bits == 20
    with pytest.raises(ValueError, match="--freq-bits"):
        ModelConfig(**{**config.to_dict(), "freq_bits": 21})


def test_config_from_dict_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict({**TINY.to_dict(), "dropout": 0})
