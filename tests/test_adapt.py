"""--adapt none|fast|max: which predictor codes, that the archive records it (decoding
needs no flag), and the combinations that are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
from tinyzip.coder.archive import ArchiveReader
from tinyzip.model.checkpoint import random_tensors, save_checkpoint
from tinyzip.model.config import ModelConfig
from tinyzip.model.context_mix import LEVELS, PRESETS

import tinyzip
from tests.test_engine import _tiny_checkpoint
from tinyzip import cli
from tinyzip.errors import UsageError
from tinyzip.models import adapt_level, choose_model

LOG = b"".join(b"2016-12-19 16:%02d:01 INFO Broker %d resigned\n" % (i % 60, i % 3) for i in range(60))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.tzm"
    _tiny_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64, window=16)
    table = tuple(bytes([i]) for i in range(256)) + tuple(b"ab" + bytes([i]) for i in range(44))
    path = tmp_path_factory.mktemp("bpe") / "bpe.tzm"
    save_checkpoint(path, config=config, tensors=random_tensors(config, seed=1),
                    tokenizer_table=table, meta={"name": "bpe"})  # fmt: skip
    return path


def _descriptor(blob: bytes) -> dict:
    import io

    return ArchiveReader(io.BytesIO(blob), lambda d, m: None).header.descriptor


def test_checkpoint_levels_pick_the_predictor(ckpt: Path) -> None:
    default = choose_model(str(ckpt)).descriptor
    assert default == choose_model(str(ckpt), "max").descriptor
    assert default == choose_model(f"cm+{ckpt}").descriptor
    assert default["name"] == "cm+transformer"
    assert default["cm"]["preset"] in PRESETS  # the default cm level, by name
    fast = choose_model(str(ckpt), "fast").descriptor
    assert fast["name"] == "cm+transformer"
    assert fast["cm"]["preset"] == "l1-2026-12+external"
    assert PRESETS["l1-2026-12+external"]["contexts"] == list(LEVELS[1])
    assert choose_model(str(ckpt), "none").descriptor["name"] == "transformer"


def test_adapt_level_names_what_an_archive_used(ckpt: Path) -> None:
    assert [adapt_level(choose_model(str(ckpt), a).descriptor) for a in ("none", "fast", "max")] == [
        "none", "fast", "max"]  # fmt: skip
    assert adapt_level(choose_model("cm:2").descriptor) == "custom"
    assert adapt_level(choose_model("zstd").descriptor) == ""


def test_cm_levels_without_a_checkpoint() -> None:
    assert choose_model("cm").descriptor == choose_model("cm", "max").descriptor
    assert choose_model("cm", "fast").descriptor["preset"] == "l1-2026-12"
    assert PRESETS["l1-2026-12"]["contexts"] == list(LEVELS[1])
    assert choose_model("cm", "fast").descriptor == choose_model("cm:1").descriptor


@pytest.mark.parametrize("adapt", ["none", "fast", "max"])
def test_each_level_round_trips_without_a_flag_on_decoding(ckpt: Path, adapt: str) -> None:
    data = LOG + bytes(range(256)) + b"\xc3\x28 invalid utf-8\n"
    blob = tinyzip.compress(data, str(ckpt), adapt=adapt)
    assert tinyzip.decompress(blob, str(ckpt)) == data
    name = _descriptor(blob)["name"]
    assert name == ("transformer" if adapt == "none" else "cm+transformer")


def test_levels_give_different_archives(ckpt: Path) -> None:
    data = b"".join(b"16:%02d:%02d INFO Broker %d resigned, epoch %d\n" % (i // 60 % 60, i % 60, i % 7, i)
                    for i in range(600))  # fmt: skip
    blobs = {a: tinyzip.compress(data, str(ckpt), adapt=a) for a in ("none", "fast", "max")}
    assert len(set(blobs.values())) == 3
    # learning online pays on repetitive logs (the random checkpoint alone falls back to
    # zstd frames), and the deeper level more
    assert len(blobs["max"]) < len(blobs["fast"]) < len(blobs["none"])


def test_bpe_checkpoint_defaults_to_none_and_refuses_mixing(bpe_ckpt: Path) -> None:
    assert choose_model(str(bpe_ckpt)).descriptor["name"] == "transformer"
    for spec, adapt in ((str(bpe_ckpt), "max"), (str(bpe_ckpt), "fast"), (f"cm+{bpe_ckpt}", None)):
        with pytest.raises(UsageError, match="byte-level"):
            choose_model(spec, adapt)


@pytest.mark.parametrize(
    "model, adapt, message",
    [
        ("cm", "none", "nothing to do"),
        ("zstd", "fast", "no model to adapt"),
        ("cm:2", "max", "either the level"),
        ("cm", "turbo", "must be one of"),
    ],
)
def test_contradictions_are_refused(model: str, adapt: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        choose_model(model, adapt)


def test_cm_plus_checkpoint_with_none_is_refused(ckpt: Path) -> None:
    with pytest.raises(UsageError, match="checkpoint alone use -m"):
        choose_model(f"cm+{ckpt}", "none")
    predictor = choose_model("cm").predictor
    with pytest.raises(UsageError, match="Predictor"):
        choose_model(predictor, "fast")


def test_cli_adapt_flag(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "app.log"
    src.write_bytes(LOG)
    assert cli.main(["-q", "-m", str(ckpt), "--adapt", "fast", str(src)]) == 0
    archive = tmp_path / "app.log.tzp"
    assert _descriptor(archive.read_bytes())["cm"]["preset"] == "l1-2026-12+external"
    capsys.readouterr()
    assert cli.main(["list", str(archive)]) == 0
    assert "cm+tiny-test (fast)" in capsys.readouterr().out
    src.unlink()
    assert cli.main(["-d", "-q", "-m", str(ckpt), str(archive)]) == 0
    assert src.read_bytes() == LOG
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["-d", "--adapt", "max", str(archive)])
    assert exc.value.code == 2
    assert "--adapt applies to compression" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--adapt", "turbo", str(src)])
