"""Archives made with a .tzm checkpoint: found by id, refused with the wrong or a missing model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import tinyzip
from tinyzip.model.checkpoint import byte_tokenizer_table, random_tensors, save_checkpoint
from tinyzip.model.config import ModelConfig

TEXT = b"".join(b"GET /api/v1/items/%d HTTP/1.1 200 %d\n" % (i * 37 % 1000, i * 7 % 500) for i in range(40))


def _checkpoint(path: Path, seed: int) -> Path:
    config = ModelConfig.preset("tiny")
    save_checkpoint(
        path,
        config=config,
        tensors=random_tensors(config, seed=seed),
        tokenizer_table=byte_tokenizer_table(),
        meta={"name": path.stem},
    )
    return path


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return _checkpoint(tmp_path / "mine.tzm", 1), _checkpoint(tmp_path / "other.tzm", 2)


def _id(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_checkpoint_archive_roundtrips_and_names_its_model(models) -> None:
    mine, _ = models
    blob = tinyzip.compress(TEXT, model=mine, streams=2)
    assert tinyzip.decompress(blob, model=mine) == TEXT
    assert tinyzip.model_bytes(mine) == mine.stat().st_size


def test_decompress_without_the_checkpoint_names_the_needed_id(models) -> None:
    mine, _ = models
    blob = tinyzip.compress(TEXT, model=mine, streams=2)
    with pytest.raises(tinyzip.WrongModelError, match=_id(mine)[:16]):
        tinyzip.decompress(blob)


def test_decompress_with_the_wrong_checkpoint_names_both_ids(models) -> None:
    mine, other = models
    blob = tinyzip.compress(TEXT, model=mine, streams=2)
    with pytest.raises(tinyzip.WrongModelError) as info:
        tinyzip.decompress(blob, model=other)
    assert _id(mine)[:16] in str(info.value) and _id(other)[:16] in str(info.value)


def test_cli_wrong_model_exits_1_with_one_line_and_no_output(models, tmp_path: Path) -> None:
    mine, other = models
    raw = tmp_path / "req.log"
    raw.write_bytes(TEXT)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tinyzip", *args], capture_output=True,
                              cwd=tmp_path, timeout=300)

    assert run("-q", "-m", str(mine), "--rm", str(raw)).returncode == 0
    archive = tmp_path / "req.log.tzp"
    listed = run("list", str(archive))
    assert _id(mine)[:16].encode() in listed.stdout and b"mine" in listed.stdout
    for args in [("-d", str(archive)), ("-d", "-m", str(other), str(archive))]:
        result = run(*args)
        err = result.stderr.decode()
        assert result.returncode == 1 and err.count("\n") == 1 and "Traceback" not in err, err
        assert _id(mine)[:16] in err
        assert not raw.exists()
    assert run("-q", "-d", "-m", str(mine), str(archive)).returncode == 0
    assert raw.read_bytes() == TEXT
