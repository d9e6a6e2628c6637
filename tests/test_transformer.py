"""The float fake-quant model against the integer engine, window masking, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tinyzip.model.checkpoint import (  # noqa: E402
    byte_tokenizer_table,
    load_checkpoint,
    random_tensors,
    save_checkpoint,
)
from tinyzip.model.config import ModelConfig  # noqa: E402
from tinyzip.model.engine import Engine  # noqa: E402
from tinyzip.model.export import export  # noqa: E402
from tinyzip.model.transformer import Transformer  # noqa: E402

CFG = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, window=32)


def _toy_data(n_words: int = 4000) -> np.ndarray:
    rng = np.random.default_rng(0)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"error=", b"ok\n", b"id=42 "]
    text = b"".join(words[i] for i in rng.integers(0, len(words), n_words))
    return np.frombuffer(text, dtype=np.uint8).astype(np.int64)


@pytest.fixture(scope="module")
def trained() -> Transformer:
    """A tiny model trained for a few seconds: 100 float steps, then 40 with fake-quant."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    data = _toy_data()
    model = Transformer(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(140):
        if step == 100:
            model.set_quant(True)
        starts = rng.integers(0, len(data) - CFG.window - 1, size=16)
        xy = torch.from_numpy(np.stack([data[s:s + CFG.window + 1] for s in starts]))
        logits = model(xy[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), xy[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _val_tokens() -> np.ndarray:
    data = _toy_data()
    return np.stack([data[i:i + CFG.window] for i in range(10_000, 13_200, 100)])


def test_engine_bpb_matches_fake_quant_bpb(trained: Transformer, tmp_path: Path) -> None:
    val = _val_tokens()
    ckpt = export(trained, tokenizer_table=byte_tokenizer_table(), meta={"name": "toy"},
                  path=tmp_path / "toy.tzm", calib_tokens=val, val_tokens=val)
    bpb = ckpt.meta["bpb"]
    assert bpb["fake_quant"] < 2.0  # the toy model learned the word structure
    assert abs(bpb["engine"] - bpb["fake_quant"]) < 0.03 * bpb["fake_quant"] + 0.01
    assert abs(bpb["gap_engine_vs_fake_quant"] - (bpb["engine"] - bpb["fake_quant"])) < 1e-12
    # what export recorded is what the file holds
    again = load_checkpoint(tmp_path / "toy.tzm")
    assert again.meta["bpb"] == bpb and again.model_id == ckpt.model_id


def test_export_calibrates_a_model_trained_without_fake_quant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    val = _val_tokens()[:4]
    with pytest.raises(ValueError, match="calib_tokens"):
        export(model, tokenizer_table=byte_tokenizer_table(), meta={}, path=tmp_path / "a.tzm",
               calib_tokens=None)
    ckpt = export(model, tokenizer_table=byte_tokenizer_table(), meta={},
                  path=tmp_path / "a.tzm", calib_tokens=val, val_tokens=val)
    assert "calibrated" in ckpt.meta["export"]["calibration"]
    assert abs(ckpt.meta["bpb"]["engine"] - ckpt.meta["bpb"]["fake_quant"]) < 0.1


def test_window_masks_tokens_beyond_the_receptive_field() -> None:
    """With L layers of window W, position t sees inputs t - L (W - 1) .. t only."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, window=8)
    model = Transformer(cfg).eval()
    a = torch.randint(0, 256, (1, 40))
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % 256
    with torch.no_grad():
        diff = (model(a) - model(b)).abs().amax(dim=-1)[0]  # (T,)
    reach = cfg.n_layers * (cfg.window - 1)
    assert float(diff[: cfg.window].min()) > 1e-6  # inside the first window: visible
    assert float(diff[reach + 1:].max()) < 1e-6  # beyond every window: masked


def test_engine_window_masks_tokens_beyond_the_receptive_field(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, window=8)
    ckpt = save_checkpoint(tmp_path / "w.tzm", config=cfg, tensors=random_tensors(cfg, seed=3),
                           tokenizer_table=byte_tokenizer_table(), meta={})
    engine = Engine(ckpt)
    a = np.random.default_rng(0).integers(0, 256, size=(1, 40))
    b = a.copy()
    b[0, 0] = (a[0, 0] + 1) % 256
    ta, tb = engine.tables_parallel(a), engine.tables_parallel(b)
    # tokens[0] is input position 1; row t is computed at input position t
    reach = cfg.n_layers * (cfg.window - 1)
    assert np.array_equal(ta[0, reach + 2:], tb[0, reach + 2:])
    assert not np.array_equal(ta[0, 1:cfg.window], tb[0, 1:cfg.window])


def test_fake_quant_changes_forward_and_keeps_gradients() -> None:
    torch.manual_seed(0)
    model = Transformer(CFG)
    x = torch.randint(0, 257, (2, 16))
    with torch.no_grad():
        plain = model(x)
    model.calibrate(x)
    assert model.quant_enabled
    quant = model(x)
    assert not torch.allclose(plain, quant)
    assert torch.allclose(plain, quant, atol=0.2)  # close, but rounded
    quant.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_torch_backend_gives_the_numpy_tables(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "t.tzm", config=CFG, tensors=random_tensors(CFG, seed=5),
                           tokenizer_table=byte_tokenizer_table(), meta={})
    tokens = np.random.default_rng(2).integers(0, 256, size=(5, 50))
    expected = Engine(ckpt).tables_parallel(tokens)
    torch_engine = Engine(ckpt, backend="torch")
    assert np.array_equal(torch_engine.tables_parallel(tokens), expected)
    torch_engine.reset(5)
    inputs = np.full(5, torch_engine.bos)
    for t in range(50):
        assert np.array_equal(torch_engine.step(inputs), expected[:, t])
        inputs = tokens[:, t]
