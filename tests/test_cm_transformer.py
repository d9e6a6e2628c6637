"""cm + transformer: compiled frames equal the lockstep reference, archives round-trip,
decoding finds the checkpoint by id, and the archive bytes are pinned.

The checkpoint is the engine tests' tiny random byte model (window 16, so a few dozen
bytes already cross the receptive field the encoder's blocks re-read)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
from tinyzip.coder.container import read_file_header
from tinyzip.model import context_mix
from tinyzip.model.checkpoint import Checkpoint, load_checkpoint, random_tensors, save_checkpoint
from tinyzip.model.cm_transformer import CmTransformerPredictor, from_descriptor
from tinyzip.model.config import ModelConfig
from tinyzip.model.context_mix import PRESETS, ContextMixPredictor

import tinyzip
from tests.test_context_mix import BEFORE_2026_12
from tests.test_engine import _tiny_checkpoint
from tinyzip.errors import CorruptInputError, UsageError, WrongModelError

GOLDEN = Path(__file__).parent / "golden" / "cm_transformer.json"
SMALL = {"table_bits": 12, "history_bits": 12, "match_hash_bits": 10}
LOG = (
    b"2016-12-19 16:00:01,112 INFO [Controller 0]: Broker 0 starting become controller\n"
    b"2016-12-19 16:00:01,345 INFO [Controller 0]: Broker 1 resigned (kafka.controller)\n"
    b"2016-12-19 16:00:02,007 WARN [Controller 0]: Partition [t,3] has no leader\n"
) * 3

needs_kernel = pytest.mark.skipif(
    context_mix._cm_kernel is None, reason="the C kernel tinyzip.model._cm_kernel was not built"
)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.tzm"
    _tiny_checkpoint(path)
    return path


def mixed(path: Path, *, compiled: bool | None = None, **cm_kw: Any) -> CmTransformerPredictor:
    cm = ContextMixPredictor(external_input=True, compiled=compiled, **{**SMALL, **cm_kw})
    return CmTransformerPredictor(load_checkpoint(path), cm=cm, compiled=compiled)


@needs_kernel
@pytest.mark.parametrize("streams", [1, 3])
def test_compiled_frames_equal_the_lockstep_reference(
    ckpt_path: Path, streams: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small encoder blocks: each re-reads the 30 inputs before it (2 layers x (16 - 1)).
    monkeypatch.setattr(CmTransformerPredictor, "ENCODE_BLOCK", 24)
    data = LOG + bytes(range(256)) + random.Random(3).randbytes(40)
    fast, slow = mixed(ckpt_path), mixed(ckpt_path, compiled=False)
    a = tinyzip.compress(data, model=fast, streams=streams, frame_size=300)
    b = tinyzip.compress(data, model=slow, streams=streams, frame_size=300)
    assert a == b
    assert tinyzip.decompress(a, model=fast) == data
    assert tinyzip.decompress(a, model=slow) == data


@needs_kernel
@pytest.mark.parametrize("threads", ["1", "2"])
def test_coding_with_or_without_the_helper_threads(
    ckpt_path: Path, threads: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The decoder's kernel steps the engine itself; with 2 threads a helper runs each next
    # byte's step on a guess, and the encoder's helper computes the next 8 KiB block's
    # tables. Three streams of unequal length, past the kernel's runs of 8192 bytes,
    # repeats (the match model's guesses hold) between random bytes (they fail): the
    # archive is the one-thread encoder's either way, and decodes.
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    rng = random.Random(11)
    data = b"".join(
        LOG[: rng.randrange(40, 400)] + rng.randbytes(rng.randrange(1, 30)) for _ in range(140)
    )
    pred = mixed(ckpt_path)
    assert pred.transformer.engine.threads == int(threads)
    blob = tinyzip.compress(data, model=pred, streams=3)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert blob == tinyzip.compress(data, model=mixed(ckpt_path), streams=3)
    assert len(data) > 3 * 8192 and len(blob) < len(data) // 2
    assert tinyzip.decompress(blob, model=pred) == data


@pytest.mark.parametrize(
    "data", [b"", b"x", bytes(range(256)), b"\xff\xfe\x80 not utf-8 \xc3\x28\n" * 9]
)
def test_hostile_inputs_round_trip(ckpt_path: Path, data: bytes) -> None:
    pred = mixed(ckpt_path)
    assert tinyzip.decompress(tinyzip.compress(data, model=pred), model=pred) == data


def test_archive_names_the_checkpoint_and_decoding_finds_it_by_path(
    ckpt_path: Path, tmp_path: Path
) -> None:
    blob = tinyzip.compress(LOG, model=f"cm+{ckpt_path}")
    assert tinyzip.decompress(blob, model=str(ckpt_path)) == LOG
    assert tinyzip.decompress(blob, model=f"cm+{ckpt_path}") == LOG
    with pytest.raises(WrongModelError, match="tiny-test"):
        tinyzip.decompress(blob)
    other = tmp_path / "other.tzm"
    config = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=2, d_ff=64, window=16)
    save_checkpoint(other, config=config, tensors=random_tensors(config, seed=99),
                    tokenizer_table=load_checkpoint(ckpt_path).tokenizer_table,
                    meta={"name": "other"})  # fmt: skip
    with pytest.raises(WrongModelError, match=r"tiny-test .*other\.tzm is"):
        tinyzip.decompress(blob, model=str(other))


def test_the_transformer_input_changes_the_payload(ckpt_path: Path) -> None:
    with_tf = tinyzip.compress(LOG, model=mixed(ckpt_path))
    alone = tinyzip.compress(LOG, model=ContextMixPredictor(**SMALL))
    assert with_tf[-200:] != alone[-200:]


def test_descriptor_round_trip_and_tampering(ckpt_path: Path) -> None:
    pred = mixed(ckpt_path)
    desc = pred.descriptor()
    ckpt = load_checkpoint(ckpt_path)
    assert from_descriptor(json.loads(json.dumps(desc)), ckpt).descriptor() == desc
    no_ext = {**desc, "cm": ContextMixPredictor(**SMALL).descriptor()}
    with pytest.raises(CorruptInputError, match="external input"):
        from_descriptor(no_ext, ckpt)
    with pytest.raises(CorruptInputError):
        from_descriptor({**desc, "name_hint": "renamed"}, ckpt)


def test_bpe_checkpoints_are_refused(tmp_path: Path) -> None:
    config = ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, d_ff=64, window=16)
    table = tuple(bytes([i]) for i in range(256)) + tuple(b"ab" + bytes([i]) for i in range(44))
    path = tmp_path / "bpe.tzm"
    ckpt: Checkpoint = save_checkpoint(path, config=config, tensors=random_tensors(config, seed=1),
                                       tokenizer_table=table, meta={"name": "bpe"})  # fmt: skip
    with pytest.raises(UsageError, match="byte-level"):
        CmTransformerPredictor(ckpt)


def test_archive_bytes_match_golden_hash(ckpt_path: Path) -> None:
    data = LOG + bytes(range(256))
    got = {
        f"b{streams}": hashlib.sha256(
            tinyzip.compress(data, model=mixed(ckpt_path), streams=streams, frame_size=400)
        ).hexdigest()
        for streams in (1, 3)
    }
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_version_2_archive_with_the_default_cm_still_decodes(ckpt_path: Path) -> None:
    # written 2026-12-04 (format version 2): the descriptor is a code and the name hint
    blob = (GOLDEN.parent / "with_checkpoint" / "archive_cm_transformer_v2.tzp").read_bytes()
    header = read_file_header(io.BytesIO(blob))
    assert header.version == 2 and header.model_id == load_checkpoint(ckpt_path).model_id
    assert header.descriptor["cm"] == {"name": "cm", "preset": "l3-2026-12+external", "version": 1}
    assert b"cm+transformer" not in blob and b"tiny-test" in blob
    assert tinyzip.decompress(blob, model=str(ckpt_path)) == LOG + bytes(range(256))


@pytest.mark.parametrize("name", ["archive_cm_transformer_v1.tzp", "archive_transformer_v1.tzp"])
def test_archives_from_before_the_short_descriptor_still_decode(ckpt_path: Path, name: str
                                                                ) -> None:
    # written 2026-12-04 by the previous code (descriptor carrying "model_id" as well):
    # cm+transformer streams=1 and the transformer alone (--adapt none, 2 streams)
    blob = (GOLDEN.parent / "with_checkpoint" / name).read_bytes()  # need tiny-test
    assert b'"model_id"' in blob
    assert tinyzip.decompress(blob, model=str(ckpt_path)) == LOG + bytes(range(256))
    # the same data today, with the cm of then, has the same descriptor but the repeated id
    if name.startswith("archive_cm"):
        then = {"contexts": PRESETS["l3-2026-11"]["contexts"], **BEFORE_2026_12}
        now = tinyzip.compress(LOG + bytes(range(256)), model=mixed(ckpt_path, **then),
                               streams=1, frame_size=400)
        old_desc = read_file_header(io.BytesIO(blob)).descriptor
        assert old_desc.pop("model_id") == load_checkpoint(ckpt_path).model_id_hex
        assert read_file_header(io.BytesIO(now)).descriptor == old_desc


def test_list_names_cm_and_the_checkpoint(ckpt_path: Path, tmp_path: Path, capsys) -> None:
    from tinyzip import cli

    archive = tmp_path / "x.tzp"
    archive.write_bytes(tinyzip.compress(LOG, model=f"cm+{ckpt_path}"))
    assert cli.main(["list", str(archive)]) == 0
    assert "cm+tiny-test" in capsys.readouterr().out


@needs_kernel
def test_archives_do_not_depend_on_engine_threads_or_backend(
    ckpt_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    data = LOG + random.Random(5).randbytes(64)
    ckpt = load_checkpoint(ckpt_path)
    blobs = []
    for threads, backend in (("1", "numpy"), ("2", "numpy"), ("1", "torch")):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        cm = ContextMixPredictor(external_input=True, **SMALL)
        pred = CmTransformerPredictor(ckpt, cm=cm, backend=backend)
        blob = tinyzip.compress(data, model=pred, streams=3, frame_size=200)
        assert tinyzip.decompress(blob, model=pred) == data
        blobs.append(blob)
    assert blobs[0] == blobs[1] == blobs[2]
