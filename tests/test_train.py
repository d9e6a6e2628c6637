"""tinyzip.train: the training CLI end to end on toy corpora, and the schedule."""

from __future__ import annotations

import csv
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")

from tinyzip.train.cli import main  # noqa: E402

from tinyzip.errors import UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINES = [
    b"2016-12-19 16:31:%02d INFO [Controller %d]: partition [test,%d] moved to broker %d\n"
    % (i % 60, i % 3, i % 5, i % 7)
    for i in range(600)
]
# every file carries bytes that are not UTF-8; one file is a gzip member
BAD_UTF8 = b"caf\xe9 \xff\xfe \xc3( \xed\xa0\x80\n"


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.log").write_bytes(b"".join(LINES[:300]) + BAD_UTF8)
    (root / "sub" / "b.log.gz").write_bytes(gzip.compress(BAD_UTF8 + b"".join(LINES[300:])))
    return root


def run_main(tmp_path: Path, corpus: Path, *extra: str) -> dict[str, object]:
    argv = ["--corpus", str(corpus), "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"),
            "--val-windows", "4", "--batch-size", "4", "--threads", "1", "--no-progress",
            "--patience", "0", *extra]
    assert main(argv) == 0
    runs = sorted((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    return json.loads((runs[-1] / "summary.json").read_text())


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--corpus", "--preset", "--vocab-size", "--qat-start", "--resume", "--strategy"):
        assert flag in out
    assert "examples:" in out


def test_tiny_preset_trains_and_exports_a_loadable_checkpoint(tmp_path: Path,
                                                              corpus: Path) -> None:
    from tinyzip.model.checkpoint import load_checkpoint

    out = tmp_path / "model.tzm"
    summary = run_main(tmp_path, corpus, "--max-steps", "6", "--val-every", "3",
                       "--out", str(out), "--name", "toy")
    assert summary["steps"] == 6
    ckpt = load_checkpoint(out)
    assert ckpt.n_bytes == out.stat().st_size == summary["checkpoint_bytes"]
    assert ckpt.config.d_model == 32 and ckpt.config.vocab_size == 256
    assert ckpt.tokenizer_table == tuple(bytes([i]) for i in range(256))
    assert ckpt.meta["corpus"]["n_files"] == 2
    assert ckpt.meta["tokenizer"] == {"kind": "bytes"}
    assert 0 < ckpt.meta["bpb"]["engine"] < 9 and math.isfinite(float(summary["val_bpb"]))
    # cm's primer (--primer-bytes): lines of each kind from the training split, the gzip
    # member read decompressed; one line of LINES' kind, the other of BAD_UTF8's
    assert sorted(ckpt.primer.splitlines(keepends=True)) == sorted([LINES[0], BAD_UTF8])
    # fake-quant was on for the last 20% of the budget, so export kept the trained scales
    assert "quantisation-aware" in ckpt.meta["export"]["calibration"]
    with open(tmp_path / "runs" / "toy" / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["val_bpb"] for r in rows if r["val_bpb"]]  # validation was logged
    assert any(r["tok_s"] for r in rows)


def test_resume_continues_from_the_last_step(tmp_path: Path, corpus: Path) -> None:
    first = run_main(tmp_path, corpus, "--max-steps", "3", "--val-every", "3", "--name", "r")
    assert first["steps"] == 3 and first["resumed_from_step"] == 0
    again = run_main(tmp_path, corpus, "--max-steps", "5", "--val-every", "3", "--name", "r",
                     "--resume")
    assert again["resumed_from_step"] == 3 and again["steps"] == 5
    assert again["run_dir"] == first["run_dir"]


def test_bpe_run_exports_its_table_and_merges(tmp_path: Path, corpus: Path) -> None:
    from tinyzip.data.tokenizer import tokenizer_from_table
    from tinyzip.model.checkpoint import load_checkpoint

    summary = run_main(tmp_path, corpus, "--vocab", "bpe", "--vocab-size", "512",
                       "--max-steps", "2", "--val-every", "2", "--qat-start", "0")
    ckpt = load_checkpoint(str(summary["checkpoint"]))
    assert Path(str(summary["checkpoint"])).name.startswith(Path(str(summary["run_dir"])).name)
    assert ckpt.config.vocab_size == len(ckpt.tokenizer_table) == summary["vocab_size"]
    assert "calibrated" in ckpt.meta["export"]["calibration"]  # --qat-start 0: calibrated
    assert ckpt.primer == b""  # cm mixes byte models only: no primer for BPE
    tok = tokenizer_from_table(ckpt.tokenizer_table, ckpt.meta["tokenizer"])
    data = b"".join(LINES[:20]) + BAD_UTF8
    assert tok.decode(tok.encode(data)) == data
    assert len(tok.encode(data)) < len(data)


def _val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["val_bpb"]]


def test_val_windows_0_scores_the_same_bytes_for_byte_and_bpe(tmp_path: Path,
                                                              corpus: Path) -> None:
    # Evenly spaced windows of T *tokens* cover different bytes for different vocabularies;
    # --val-windows 0 scores the whole validation split, so bpb is over the same bytes.
    val_bytes = {}
    for vocab in ("byte", "bpe"):
        summary = run_main(tmp_path, corpus, "--vocab", vocab, "--vocab-size", "512",
                           "--max-steps", "4", "--val-every", "2", "--val-windows", "0",
                           "--name", vocab)
        run_dir = Path(str(summary["run_dir"]))
        index = json.loads((run_dir / "tokens" / "index.json").read_text())
        rows = _val_rows(run_dir)
        assert len(rows) == 3  # steps 2 and 4, and the validation after fit
        assert {float(r["val_bytes"]) for r in rows} == {index["splits"]["val"]["n_bytes"]}
        # training seconds are logged with every validation, for curves against time
        secs = [float(r["train_s"]) for r in rows]
        assert 0 < secs[0] < secs[1] and secs[2] == pytest.approx(secs[1], abs=1.0)
        val_bytes[vocab] = float(rows[-1]["val_bytes"])
    assert val_bytes["byte"] == val_bytes["bpe"] > 4 * 128  # more than 4 byte windows


def test_new_run_never_reuses_an_existing_run_dir(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "runs" / "corpus-tiny-byte").mkdir(parents=True)
    (tmp_path / "runs" / "corpus-tiny-byte" / "keep.txt").write_text("x")
    with pytest.raises(UsageError):  # fails after choosing the dir: the budget is invalid
        main(["--corpus", str(corpus), "--preset", "tiny", "--runs-dir",
              str(tmp_path / "runs"), "--max-steps", "0"])
    assert (tmp_path / "runs" / "corpus-tiny-byte-2").is_dir()
    assert (tmp_path / "runs" / "corpus-tiny-byte" / "keep.txt").read_text() == "x"
    with pytest.raises(UsageError, match="--resume"):  # an explicit name means that dir
        main(["--corpus", str(corpus), "--runs-dir", str(tmp_path / "runs"),
              "--name", "corpus-tiny-byte"])


def test_empty_corpus_is_a_one_line_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "nothing.log").write_bytes(b"")
    with pytest.raises(UsageError) as err:
        main(["--corpus", str(tmp_path / "empty"), "--runs-dir", str(tmp_path / "runs")])
    assert "no usable corpus files" in str(err.value)
    assert "\n" not in str(err.value)


def test_resume_without_a_run_is_a_usage_error(tmp_path: Path, corpus: Path) -> None:
    with pytest.raises(UsageError, match="nothing to resume"):
        main(["--corpus", str(corpus), "--resume", "--runs-dir", str(tmp_path / "runs")])


def test_train_py_prints_errors_as_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--corpus",
                           str(tmp_path / "missing")], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"tinyzip train: corpus not found: {tmp_path / 'missing'}"]


# --- the schedule, without training ---------------------------------------------------


def make_module(**train: object):  # type: ignore[no-untyped-def]
    from tinyzip.model.config import ModelConfig
    from tinyzip.train.module import TinyzipModule

    config = ModelConfig.preset("tiny")
    return TinyzipModule(config.to_dict(), {"context": 8, "max_steps": 100, **train}, [1] * 256)


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    m = make_module(lr=1e-3, warmup=0.1, min_lr_ratio=0.1)
    assert m.lr_at(0.05) == pytest.approx(0.5e-3)
    assert m.lr_at(0.1) == pytest.approx(1e-3)
    assert m.lr_at(0.55) == pytest.approx(0.55e-3)
    assert m.lr_at(1.0) == pytest.approx(1e-4)


def test_fake_quant_is_due_for_the_last_share_of_the_budget() -> None:
    m = make_module(qat_start=0.25)
    assert not m.quant_due(0.74) and m.quant_due(0.75)
    assert not make_module(qat_start=0.0).quant_due(1.0)


def test_bos_rows_predict_the_first_token_of_the_window() -> None:
    import torch

    m = make_module(bos_fraction=0.5)
    windows = torch.arange(4 * 9).reshape(4, 9)  # (B, T+1)
    inputs, targets = m._bos_inputs(windows)
    assert inputs.shape == targets.shape == (4, 8)
    assert inputs[0, 0] == m.model_config.bos_id and torch.equal(targets[0], windows[0, :8])
    assert torch.equal(inputs[0, 1:], windows[0, :7])
    assert torch.equal(inputs[3], windows[3, :8]) and torch.equal(targets[3], windows[3, 1:])


def test_train_config_rejects_bad_flags_in_cli_words() -> None:
    from tinyzip.train.module import TrainConfig

    with pytest.raises(UsageError, match="--qat-start"):
        TrainConfig(qat_start=1.5, max_steps=1)
    with pytest.raises(UsageError, match="--max-steps or --max-time"):
        TrainConfig()
