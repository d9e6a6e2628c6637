"""The shipped default logs model (checkpoints/): used when no -m is given, named in the
archive, found by id when decoding, documented by a model card; non-log input never
grows past the headers."""

from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

import pytest
from tinyzip.coder.archive import ArchiveReader
from tinyzip.model.checkpoint import load_checkpoint

import tinyzip
from tinyzip import cli
from tinyzip.models import choose_model, packaged_checkpoints

from tests.conftest import CORPUS, REPO

DEFAULTS = sorted(REPO.glob("checkpoints/default-*.tzm"))
MAX_MODEL_BYTES = 1 << 20


def _header(blob: bytes):  # noqa: ANN202
    return ArchiveReader(io.BytesIO(blob), lambda d, m: None).header


def _descriptor(blob: bytes) -> dict:
    return _header(blob).descriptor


def test_exactly_one_default_ships_with_its_model_card() -> None:
    assert len(DEFAULTS) == 1, DEFAULTS
    path = DEFAULTS[0]
    assert path.stat().st_size <= MAX_MODEL_BYTES
    assert path.stem in packaged_checkpoints()
    card = path.with_suffix(".md").read_text()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest in card  # the card describes these very bytes
    ckpt = load_checkpoint(path)
    assert f"{ckpt.n_bytes:,} bytes" in card
    for field in ("corpus", "preset", "steps", "time and hardware", "float / fake-quant / "
                  "integer engine", "Reproduce"):
        assert field in card, field
    bpb = ckpt.meta["bpb"]
    assert f"{bpb['float']:.4f} / {bpb['fake_quant']:.4f} / {bpb['engine']:.4f}" in card
    # byte-level, so that it can be mixed into cm at the default --adapt max
    assert ckpt.config.vocab_size == 256


def test_compress_without_model_uses_the_default_and_decodes_by_id() -> None:
    ckpt = load_checkpoint(DEFAULTS[0])
    data = (REPO / "samples" / "kafka-server.log").read_bytes()[:20_000]
    blob = tinyzip.compress(data)
    desc = _descriptor(blob)
    assert desc == choose_model(None).descriptor
    assert desc["name"] == "cm+transformer"
    assert desc["primed"] is True and ckpt.primer  # cm learns its primer first
    assert _header(blob).model_id == ckpt.model_id  # found by this id when decoding
    assert tinyzip.decompress(blob) == data


def test_archives_of_the_previous_default_still_decode() -> None:
    # written 2026-12-06 with the default of before its primer, still shipped for them
    blob = (REPO / "tests" / "golden" / "archive_default_tiny_24k_unprimed_v2.tzp").read_bytes()
    previous = load_checkpoint(REPO / "checkpoints" / "previous-default-tiny-24k.tzm")
    assert _header(blob).model_id == previous.model_id and not previous.primer
    assert "primed" not in _descriptor(blob)
    assert tinyzip.decompress(blob) == (REPO / "samples" / "kafka-server.log").read_bytes()[:3000]


def test_archives_of_the_first_primed_default_still_decode() -> None:
    # written 2026-12-06 with the default of before (its primer's lines told apart by 80
    # template bytes, shipped on as previous-primed-default-tiny-24k), when cm kept the
    # primer's counts as learned (descriptor code 33, no "primer_counts")
    blob = (REPO / "tests" / "golden" / "archive_default_tiny_24k_primed_v2.tzp").read_bytes()
    desc = _descriptor(blob)
    assert desc["primed"] is True and "primer_counts" not in desc
    previous = load_checkpoint(REPO / "checkpoints" / "previous-primed-default-tiny-24k.tzm")
    assert _header(blob).model_id == previous.model_id and previous.primer
    assert tinyzip.decompress(blob) == (REPO / "samples" / "kafka-server.log").read_bytes()[:3000]


def test_archives_of_the_default_before_the_mixer_was_relaxed_still_decode() -> None:
    # written 2026-12-06 with today's default model, when cm capped the primer's counts
    # but kept the mixer as the primer left it (descriptor code 35, no "primer_mixer")
    blob = (REPO / "tests" / "golden" / "archive_default_tiny_24k_capped_v2.tzp").read_bytes()
    desc = _descriptor(blob)
    assert desc["primer_counts"] == 1 and "primer_mixer" not in desc
    assert _header(blob).model_id == load_checkpoint(DEFAULTS[0]).model_id
    assert tinyzip.decompress(blob) == (REPO / "samples" / "kafka-server.log").read_bytes()[:3000]


def test_cli_list_names_the_default_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    src = tmp_path / "app.log"
    src.write_bytes(b"2016-12-19 16:31:48 INFO [Controller 0]: broker 1 resigned\n" * 50)
    assert cli.main(["-q", str(src)]) == 0
    capsys.readouterr()
    assert cli.main(["list", str(src) + ".tzp"]) == 0
    out = capsys.readouterr().out
    name = load_checkpoint(DEFAULTS[0]).name
    assert f"cm+{name}" in out
    assert load_checkpoint(DEFAULTS[0]).model_id_hex[:16] in out


@pytest.mark.parametrize("kind", ["random", "all_bytes", "invalid_utf8"])
def test_non_log_input_never_grows_past_the_headers(kind: str) -> None:
    if kind == "random":
        data = os.urandom(300_000)
    elif kind == "all_bytes":
        data = bytes(range(256)) * 64
    else:
        data = b"\xff\xfe\xc3\x28\xa0\xa1" * 5_000
    blob = tinyzip.compress(data)
    assert tinyzip.decompress(blob) == data
    # the per-chunk fallback (zstd or stored) bounds the growth to framing
    assert len(blob) <= len(data) + 512 + len(data) // 1000


@pytest.mark.skipif(not CORPUS.exists(), reason="needs ../shared/corpus")
def test_default_beats_xz_on_a_corpus_log() -> None:
    import lzma

    data = (CORPUS / "loghub" / "Apache_2k.log").read_bytes()[:40_000]
    blob = tinyzip.compress(data)
    assert tinyzip.decompress(blob) == data
    xz = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    assert len(blob) < 0.8 * len(xz)
    assert re.search(r"default-", repr(_descriptor(blob)))


GOLDEN = REPO / "tests" / "golden" / "default_model.json"


def test_default_archive_bytes_are_pinned_across_threads(tmp_path: Path) -> None:
    # the default model's bitstream (checkpoint + cm at --adapt max) is the same with 1 or
    # 2 threads (-T) and pinned by hash: a change of the shipped model or of cm shows here
    import json

    src = tmp_path / "kafka.log"
    src.write_bytes((REPO / "samples" / "kafka-server.log").read_bytes()[:12_000])
    blobs = set()
    for threads in (1, 2):
        out = tmp_path / f"t{threads}.tzp"
        assert cli.main(["-q", "-T", str(threads), "-o", str(out), str(src)]) == 0
        blobs.add(out.read_bytes())
    assert len(blobs) == 1
    blob = blobs.pop()
    assert tinyzip.decompress(blob) == src.read_bytes()
    got = {"model": DEFAULTS[0].name, "sha256": hashlib.sha256(blob).hexdigest(),
           "bytes": len(blob)}
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())


@pytest.mark.slow
def test_the_plain_numpy_reference_gives_the_compiled_bytes(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # numpy engine and numpy cm (lockstep, the primer, its count cap and the relaxed
    # mixer included) instead of the C kernels: the same archive. A short input and a
    # 16 KiB primer prefix keep it to minutes (the whole 64 KiB prefix took half an
    # hour); the compiled archive of the real settings is pinned by
    # test_default_archive_bytes_are_pinned_across_threads.
    from tinyzip.model import cm_transformer
    from tinyzip.model import primer as primer_mod

    monkeypatch.setattr(primer_mod, "MIN_LEARNED", 16_384)
    data = (REPO / "samples" / "kafka-server.log").read_bytes()[:3000]
    compiled = tinyzip.compress(data)
    monkeypatch.setenv("TINYZIP_PURE_NUMPY", "1")
    monkeypatch.setattr(cm_transformer, "_primed_states", {})  # learned here, not restored
    reference = tinyzip.compress(data)
    assert _descriptor(reference)["primer_counts"] == 1
    assert _descriptor(reference)["primer_mixer"] == 4
    assert reference == compiled
    assert tinyzip.decompress(reference) == data
