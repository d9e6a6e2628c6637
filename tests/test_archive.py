"""Round trips through the Python API: real files, hostile bytes, streaming, chunk modes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random

import pytest
from conftest import REPO, Order0Predictor, compress_with_policy, corpus_files
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tinyzip.coder.archive import ArchiveReader
from tinyzip.coder.container import ChunkMode, EndRecord, read_file_header

import tinyzip


def _log_lines(n: int, seed: int = 3) -> bytes:
    """Log-like text with varying fields, so that zstd does not already crush it."""
    rng = random.Random(seed)
    levels = ["INFO ", "WARN ", "DEBUG", "ERROR"]
    out = []
    for i in range(n):
        out.append(
            f"2026-11-23 16:{i // 60 % 60:02d}:{i % 60:02d},{rng.randrange(1000):03d} "
            f"{rng.choice(levels)} [net-{rng.randrange(8)}] org.apache.kafka.Broker - "
            f"request {rng.randrange(10**6)} from 10.0.{rng.randrange(256)}.{rng.randrange(256)} "
            f"took {rng.randrange(2000)} ms\n"
        )
    return "".join(out).encode()


LOG = _log_lines(300)

HOSTILE = {
    "empty": b"",
    "one_byte": b"x",
    "all_256_values": bytes(range(256)) * 3,
    "invalid_utf8": b"ok \xff\xfe\xc3\x28 \xed\xa0\x80 tail\x80" * 50,
    "no_trailing_newline": b"line one\nline two\nline three without newline",
    "nul_bytes": b"\x00" * 1000 + b"a",
}


def _modes(blob: bytes) -> set[ChunkMode]:
    reader = ArchiveReader(io.BytesIO(blob), lambda d, m: None)
    modes: set[ChunkMode] = set()
    for record in reader.scan():
        if isinstance(record, EndRecord):
            break
        modes |= {c.mode for c in record.chunks}
    return modes


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("model", ["zstd", "order0", "cm"])
def test_roundtrip_hostile_bytes(name: str, model: str) -> None:
    data = HOSTILE[name]
    spec = Order0Predictor() if model == "order0" else model
    blob = tinyzip.compress(data, model=spec)
    decoder_model = Order0Predictor() if model == "order0" else None
    assert tinyzip.decompress(blob, model=decoder_model) == data


def test_roundtrip_every_corpus_file_whole_with_zstd_model(corpus: list) -> None:
    for path in corpus:
        data = path.read_bytes()
        blob = tinyzip.compress(data, model="zstd")
        assert tinyzip.decompress(blob) == data, path


def test_roundtrip_every_corpus_file_prefix_with_cm_model(corpus: list) -> None:
    # The adaptive model is the slow path: a 512-byte slice of every file keeps the suite
    # quick while every format in the corpus passes through the real predictor (the
    # whole files go through it in the slow test below).
    for path in corpus:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) // 2 - 256))
            data = f.read(512)
        blob = tinyzip.compress(data, model="cm", frame_size=400)
        assert tinyzip.decompress(blob) == data, path


@pytest.mark.slow
def test_roundtrip_every_corpus_file_whole_with_default_model(corpus: list) -> None:
    # About 21 MB through the adaptive model: minutes, so outside the default run.
    for path in corpus:
        data = path.read_bytes()
        assert tinyzip.decompress(tinyzip.compress(data)) == data, path


def test_model_chunks_are_used_on_logs_and_beat_zstd() -> None:
    blob = tinyzip.compress(LOG, model="cm")
    assert ChunkMode.MODEL in _modes(blob)
    assert len(blob) < len(tinyzip.compress(LOG, model="zstd"))
    assert tinyzip.decompress(blob) == LOG


def test_random_mebibyte_grows_at_most_a_tenth_of_a_percent_plus_256() -> None:
    data = random.Random(1).randbytes(1 << 20)
    blob = tinyzip.compress(data)
    assert len(blob) <= len(data) * 1.001 + 256
    assert _modes(blob) == {ChunkMode.STORED}
    assert tinyzip.decompress(blob) == data


def test_roundtrip_fifty_mebibytes_of_one_byte() -> None:
    data = b"a" * (50 << 20)
    blob = tinyzip.compress(data)
    assert len(blob) < 100_000
    assert tinyzip.decompress(blob) == data


def test_mixed_chunk_modes_in_one_frame(order0: Order0Predictor) -> None:
    # Skewed letters (order-0 wins), random bytes (stored), a phrase (zstd): three streams.
    rng = random.Random(7)
    skewed = bytes(rng.choices(b"ab", weights=[19, 1], k=6000))
    data = skewed + rng.randbytes(6000) + b"hello world " * 500
    blob = compress_with_policy(
        data, order0, frame_size=1 << 16, streams=3, min_stream_bytes=1000
    )
    # Each chunk keeps its smallest mode.
    assert _modes(blob) == {ChunkMode.MODEL, ChunkMode.STORED, ChunkMode.ZSTD}
    assert tinyzip.decompress(blob, model=Order0Predictor()) == data


def test_state_carries_across_frames_and_streams(order0: Order0Predictor) -> None:
    data = LOG
    for frame_size, streams in [(1000, 1), (4096, 3), (len(data), 64)]:
        blob = compress_with_policy(
            data, Order0Predictor(), frame_size=frame_size, streams=streams, min_stream_bytes=64
        )
        assert tinyzip.decompress(blob, model=Order0Predictor()) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=5000),
    frame_size=st.integers(1, 3000),
    streams=st.integers(1, 9),
)
def test_container_roundtrip_property(data: bytes, frame_size: int, streams: int) -> None:
    blob = compress_with_policy(
        data, Order0Predictor(), frame_size=frame_size, streams=streams, min_stream_bytes=1
    )
    assert tinyzip.decompress(blob, model=Order0Predictor()) == data
    header = read_file_header(io.BytesIO(blob))
    assert header.original_size == len(data)


@settings(max_examples=40, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3000), max_size=6), frame_size=st.integers(1, 4000))
def test_streaming_writer_equals_one_shot(chunks: list[bytes], frame_size: int) -> None:
    out = io.BytesIO()
    with tinyzip.open(out, "wb", model="zstd", frame_size=frame_size) as f:
        for c in chunks:
            f.write(c)
    data = b"".join(chunks)
    assert tinyzip.decompress(out.getvalue()) == data
    with tinyzip.open(io.BytesIO(out.getvalue()), "rb") as f:
        assert f.read() == data


def test_open_reads_in_pieces(tmp_path) -> None:
    path = tmp_path / "x.tzp"
    data = LOG[:8000]
    with tinyzip.open(path, "wb", model="cm", frame_size=3000) as f:
        f.write(data)
    with tinyzip.open(path) as f:
        pieces = []
        while piece := f.read(777):
            pieces.append(piece)
    assert b"".join(pieces) == data


def test_open_rejects_text_mode(tmp_path) -> None:
    with pytest.raises(tinyzip.UsageError):
        tinyzip.open(tmp_path / "x.tzp", "rt")


def test_import_tinyzip_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tinyzip; "
        "b = tinyzip.compress(b'hello hello hello', model='cm'); "
        "assert tinyzip.decompress(b) == b'hello hello hello'; "
        "print(sorted(m for m in ('torch', 'lightning', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


GOLDEN = REPO / "tests" / "golden" / "archive.json"


def _golden_archives() -> dict[str, str]:
    data = LOG + bytes(range(256)) + b"tail without newline"
    return {
        "cm": hashlib.sha256(tinyzip.compress(data, model="cm", streams=4)).hexdigest(),
        "order0": hashlib.sha256(
            tinyzip.compress(data, model=Order0Predictor(), streams=3, frame_size=1500)
        ).hexdigest(),
    }


def test_archive_bytes_match_golden_hashes() -> None:
    got = _golden_archives()
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert got == expected, "archive bytes changed: a format change needs a version bump"


def test_golden_archives_still_decode() -> None:
    # Archives written by earlier builds (format versions 1 and 2): decoding them must
    # never change.
    for path in sorted((REPO / "tests" / "golden").glob("*.tzp")):
        expected = json.loads(path.with_suffix(".json").read_text())
        raw = tinyzip.decompress(path.read_bytes(), model=Order0Predictor() if "order0" in path.name else None)
        assert hashlib.sha256(raw).hexdigest() == expected["sha256"], path.name
        assert len(raw) == expected["size"]


def test_corpus_is_present() -> None:
    assert len(corpus_files()) > 20
