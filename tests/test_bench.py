"""tinyzip bench: report schema, round-trip verification, break-even arithmetic, generic LLM path.

Benchmarks are not tests: nothing here asserts a speed, and only the classic codecs
(and toy models) run, on a few kilobytes.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest

from tinyzip.bench import cli, codecs, runner
from tinyzip.bench.codecs import Codec, Registry
from tinyzip.errors import UsageError

LOG_LINES = b"".join(
    b"081109 2036%02d 148 INFO dfs.DataNode$PacketResponder: PacketResponder %d for block "
    b"blk_%d terminating\n" % (i % 60, i % 3, 3886504906413966 + 7 * i)
    for i in range(300)
)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.log").write_bytes(LOG_LINES)
    (root / "sub" / "b.log").write_bytes(LOG_LINES[::-1])
    (root / ".hidden").write_bytes(b"not corpus")
    return root


def _classic_only(monkeypatch: pytest.MonkeyPatch, extra: list[Codec] | None = None) -> None:
    """Make the registry hold the classic codecs (and ``extra``), never tinyzip's model."""
    real = codecs.registry

    def fake(**kwargs: object) -> Registry:
        kwargs["with_tinyzip"] = False
        reg = real(**kwargs)  # type: ignore[arg-type]
        for codec in extra or []:
            reg.add(codec)
        return reg

    monkeypatch.setattr(codecs, "registry", fake)


# --- JSON schema ------------------------------------------------------------------------------

ROW_TYPES: dict[str, tuple[type, ...]] = {
    "compressor": (str,),
    "kind": (str,),
    "raw_bytes": (int,),
    "payload_bytes": (int,),
    "model_bytes": (int,),
    "bpb": (float,),
    "bpb_with_model": (float,),
    "compress_kbps": (float,),
    "decompress_kbps": (float,),
    "roundtrip": (bool,),
    "peak_mem_bytes": (int,),
    "break_even_bytes": (int, str, type(None)),
    "tinyzip_wins_below_bytes": (int, type(None)),
    "error": (str, type(None)),
}


def test_json_report_has_documented_fields_with_types(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _classic_only(monkeypatch)
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    assert cli.main([str(corpus), "--codecs", "gzip,xz,zstd", "--json", str(out),
                     "--md", str(md)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"results", "files", "meta"}
    assert [r["compressor"] for r in doc["results"]] == ["gzip -9", "xz -9e", "zstd -19"]
    for row in doc["results"] + doc["files"]:
        for key, types in ROW_TYPES.items():
            assert isinstance(row[key], types), (key, row[key])
        assert row["roundtrip"] is True
        assert row["bpb"] == pytest.approx(8 * row["payload_bytes"] / row["raw_bytes"])
    assert {r["file"] for r in doc["files"]} == {"a.log", "sub/b.log"}  # hidden file left out
    assert doc["meta"]["n_files"] == 2
    assert doc["meta"]["raw_bytes"] == 2 * len(LOG_LINES)
    total_gzip = doc["results"][0]["payload_bytes"]
    per_file = [r["payload_bytes"] for r in doc["files"] if r["compressor"] == "gzip -9"]
    assert total_gzip == sum(per_file)
    assert "| gzip -9 |" in md.read_text()


def test_zstd_dictionary_bytes_count_as_model_bytes(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _classic_only(monkeypatch)
    train = tmp_path / "train"
    train.mkdir()
    for i in range(8):
        (train / f"t{i}.log").write_bytes(LOG_LINES[i * 500 :] + LOG_LINES[: i * 500])
    out = tmp_path / "r.json"
    cli.main([str(corpus), "--codecs", "zstd", "--dict-corpus", str(train), "--json", str(out)])
    rows = {r["compressor"]: r for r in json.loads(out.read_text())["results"]}
    with_dict = rows["zstd -19 --dict"]
    assert with_dict["roundtrip"] is True
    assert with_dict["model_bytes"] > 0
    assert with_dict["bpb_with_model"] == pytest.approx(
        8 * (with_dict["payload_bytes"] + with_dict["model_bytes"]) / with_dict["raw_bytes"]
    )
    assert rows["zstd -19"]["model_bytes"] == 0


# --- round trips ------------------------------------------------------------------------------


def _broken(name: str = "broken") -> Codec:
    """gzip whose decompress drops the last byte."""
    return Codec(name, gzip.compress, lambda b: gzip.decompress(b)[:-1])


def test_codec_returning_wrong_bytes_is_reported_as_roundtrip_false(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _classic_only(monkeypatch, extra=[_broken()])
    out = tmp_path / "r.json"
    assert cli.main([str(corpus), "--codecs", "gzip,broken", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    rows = {r["compressor"]: r for r in doc["results"]}
    assert rows["broken"]["roundtrip"] is False
    assert "differ" in rows["broken"]["error"]
    assert rows["gzip -9"]["roundtrip"] is True
    assert all(r["roundtrip"] is False for r in doc["files"] if r["compressor"] == "broken")


@pytest.mark.parametrize("isolate", [True, False])
def test_codec_that_raises_is_a_failed_row_not_a_crash(isolate: bool) -> None:
    def explode(_: bytes) -> bytes:
        raise ValueError("boom")

    m = runner.measure(Codec("x", gzip.compress, explode), LOG_LINES, file="f", isolate=isolate)
    assert m.roundtrip is False
    assert m.payload_bytes is not None
    assert "boom" in (m.error or "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_codec_that_kills_its_process_is_a_failed_row() -> None:
    def die(_: bytes) -> bytes:
        os._exit(3)

    m = runner.measure(Codec("x", die, gzip.decompress), LOG_LINES, file="f", isolate=True)
    assert m.roundtrip is False
    assert m.payload_bytes is None
    assert "exited 3" in (m.error or "")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_codec_past_its_timeout_is_killed_and_reported() -> None:
    import time

    def hang(d: bytes) -> bytes:
        time.sleep(60)
        return d

    m = runner.measure(Codec("x", hang, hang), LOG_LINES, file="f", isolate=True, timeout_s=0.5)
    assert m.roundtrip is False
    assert "timed out" in (m.error or "")


def test_ppmd_roundtrips_log_text() -> None:
    pytest.importorskip("pyppmd")
    codec = codecs._ppmd()
    m = runner.measure(codec, LOG_LINES * 3, file="f", isolate=False)
    assert m.roundtrip is True
    assert m.payload_bytes is not None and m.payload_bytes < len(LOG_LINES)


@pytest.mark.skipif(sys.platform == "win32", reason="shell script as fake binary")
def test_external_binary_is_driven_through_temp_files(tmp_path: Path) -> None:
    # A fake "cmix" that stores its input reversed: the wrapper must hand files both ways.
    fake = tmp_path / "cmix"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "_, mode, src, dst = sys.argv\n"
        "open(dst, 'wb').write(open(src, 'rb').read()[::-1])\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    tool = next(t for t in codecs.EXTERNAL_TOOLS if t.program == "cmix")
    codec = codecs.external_codec(tool, str(fake))
    payload = codec.compress(b"hello\n")
    assert payload == b"\nolleh"
    assert codec.decompress(payload) == b"hello\n"
    reg = codecs.registry(with_tinyzip=False, which=lambda p: str(fake) if p == "cmix" else None)
    assert "cmix" in reg.codecs and "paq8px -8" in reg.skipped


@pytest.mark.skipif(not runner.can_fork() or sys.platform != "linux", reason="fork + ru_maxrss")
def test_external_binary_argv_and_memory_are_the_programs(tmp_path: Path) -> None:
    # A fake "paq8px" that insists on paq8px v216's usage (-8 IN OUT, -d IN OUT) and touches
    # 64 MiB: the bench's peak memory must be the program's, not the forked child's own RSS.
    fake = tmp_path / "paq8px"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "_, mode, src, dst = sys.argv\n"
        "assert mode in ('-8', '-d'), mode\n"
        "ballast = b'\\x01' * (64 << 20)\n"
        "data = open(src, 'rb').read()\n"
        "open(dst, 'wb').write(b'P' + data if mode == '-8' else data[1:])\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    reg = codecs.registry(with_tinyzip=False, which=lambda p: str(fake) if p == "paq8px" else None)
    (codec,) = reg.select(["paq8px"])
    m = runner.measure(codec, LOG_LINES, file="a.log", isolate=True, timeout_s=60)
    assert m.error is None and m.roundtrip is True
    assert m.payload_bytes == len(LOG_LINES) + 1 and m.kind == "external"
    assert m.peak_mem_bytes is not None and m.peak_mem_bytes >= 60 << 20


def test_unknown_codec_name_is_a_usage_error(corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _classic_only(monkeypatch)
    with pytest.raises(UsageError, match="unknown codec"):
        cli.main([str(corpus), "--codecs", "gzip,nosuch"])


def test_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        cli.main([str(tmp_path / "absent"), "--codecs", "gzip"])


# --- break-even -------------------------------------------------------------------------------


def test_break_even_is_model_bytes_over_rate_difference() -> None:
    # tinyzip: 1,000,000-byte model at 1 bpb (rate 1/8); baseline: no model at 2 bpb (1/4).
    # Equal at N = 1e6 / (1/4 - 1/8) = 8e6 bytes; strictly smaller from the next byte.
    n, below = runner.break_even(1_000_000, 0.125, 0, 0.25)
    assert n == 8_000_001
    assert below is None
    assert 1_000_000 + 0.125 * n < 0.25 * n
    assert not 1_000_000 + 0.125 * (n - 1) < 0.25 * (n - 1)


def test_break_even_is_never_when_tinyzip_rate_is_not_lower() -> None:
    assert runner.break_even(1000, 0.2, 0, 0.1) == ("never", None)
    assert runner.break_even(1000, 0.1, 0, 0.1) == ("never", None)


def test_break_even_with_baseline_model_bytes() -> None:
    # Smaller model and lower rate: tinyzip wins from the first byte.
    assert runner.break_even(0, 0.1, 112_640, 0.2) == (0, None)
    # Baseline with a dictionary: only the model difference has to be paid back.
    assert runner.break_even(200_000, 0.1, 100_000, 0.2)[0] == 1_000_001
    # Against a 100 MB generic LLM with a better rate, tinyzip wins only on small inputs.
    n, below = runner.break_even(1_000_000, 0.2, 100_000_000, 0.1)
    assert n == "never"
    assert below == math.ceil(99_000_000 / 0.1)


def test_break_even_rows_use_reference_rates() -> None:
    rows = [
        {"compressor": "tz", "raw_bytes": 1000, "payload_bytes": 100, "model_bytes": 500,
         "roundtrip": True},
        {"compressor": "xz", "raw_bytes": 1000, "payload_bytes": 150, "model_bytes": 0,
         "roundtrip": True},
        {"compressor": "bad", "raw_bytes": 1000, "payload_bytes": 10, "model_bytes": 0,
         "roundtrip": False},
    ]
    for r in rows:
        r["break_even_bytes"] = r["tinyzip_wins_below_bytes"] = None
    runner.fill_break_even(rows, "tz")
    assert rows[0]["break_even_bytes"] is None  # the reference itself
    assert rows[1]["break_even_bytes"] == 10_001  # 500 / (0.15 - 0.10) = 10,000
    assert rows[2]["break_even_bytes"] is None  # lost data: no baseline


def test_tinyzip_row_is_the_break_even_reference(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for tinyzip (its API may be slow or absent here): xz with a 1000-byte "model".
    import lzma

    fake_tz = Codec("tinyzip fake", lzma.compress, lzma.decompress, model_bytes=1000,
                    kind="tinyzip")
    _classic_only(monkeypatch, extra=[fake_tz])
    out = tmp_path / "r.json"
    cli.main([str(corpus), "--codecs", "gzip,tinyzip", "--json", str(out)])
    doc = json.loads(out.read_text())
    rows = {r["compressor"]: r for r in doc["results"]}
    assert doc["meta"]["reference"] == "tinyzip fake"
    tz, gz = rows["tinyzip fake"], rows["gzip -9"]
    expected = runner.break_even(1000, tz["payload_bytes"] / tz["raw_bytes"], 0,
                                 gz["payload_bytes"] / gz["raw_bytes"])[0]
    assert gz["break_even_bytes"] == expected
    assert tz["break_even_bytes"] is None


# --- plot -------------------------------------------------------------------------------------


def test_plot_writes_a_png(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    _classic_only(monkeypatch)
    png = tmp_path / "r.png"
    cli.main([str(corpus), "--codecs", "gzip,bzip2", "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- generic LLM ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 1-layer GPT-2 with a byte-level BPE tokenizer, saved for offline loading."""
    folder = tmp_path_factory.mktemp("gpt2")
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    pytest.importorskip("torch")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([LOG_LINES.decode()], trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=tok.get_vocab_size(),
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )
    import torch

    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_generic_code_length_matches_direct_sum_with_bos(tiny_gpt2: Path) -> None:
    import torch

    from tinyzip.bench import generic

    source = generic.resolve(tiny_gpt2)
    assert source.weight_bytes > 0 and source.gguf_file is None
    model, tok = generic.load(source)
    data = LOG_LINES[:150]
    result = generic.code_length(model, tok, data, context=64)
    assert result.lossless
    # Independent computation: BOS + every token, one window at a time (63 text tokens each).
    ids = tok(data.decode(), add_special_tokens=False)["input_ids"]
    assert result.n_tokens == len(ids)
    expected = 0.0
    for lo in range(0, len(ids), 63):
        piece = ids[lo : lo + 63]
        with torch.no_grad():
            logits = model(torch.tensor([[tok.bos_token_id, *piece]])).logits[0]
        logp = torch.log_softmax(logits.double(), -1)
        expected -= sum(logp[i, t].item() for i, t in enumerate(piece)) / math.log(2)
    assert result.bits == pytest.approx(expected, rel=1e-5)
    # A random model is close to uniform over its vocabulary: about log2(V) bits per token.
    assert result.bits / len(ids) == pytest.approx(math.log2(model.config.vocab_size), rel=0.1)


def test_generic_without_bos_pays_uniform_bits_for_each_first_token(tiny_gpt2: Path) -> None:
    import torch

    from tinyzip.bench import generic

    model, tok = generic.load(generic.resolve(tiny_gpt2), device="cpu")
    data = LOG_LINES[:100]
    with_bos = generic.code_length(model, tok, data, context=1000)
    tok.bos_token = None
    tok.eos_token = None
    no_bos = generic.code_length(model, tok, data, context=1000)
    ids = tok(data.decode(), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    rest = -sum(logp[i - 1, ids[i]].item() for i in range(1, len(ids))) / math.log(2)
    assert no_bos.bits == pytest.approx(math.log2(model.config.vocab_size) + rest, rel=1e-5)
    assert no_bos.bits != pytest.approx(with_bos.bits, rel=1e-9)


def test_generic_path_adds_a_row_with_weight_bytes(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gpt2: Path
) -> None:
    _classic_only(monkeypatch)
    out = tmp_path / "r.json"
    cli.main([str(corpus), "--codecs", "gzip", "--generic", str(tiny_gpt2),
              "--generic-max-bytes", "600", "--json", str(out)])
    doc = json.loads(out.read_text())
    row = next(r for r in doc["results"] if r["kind"] == "generic")
    assert row["roundtrip"] is None  # an ideal code length, not a codec
    assert row["model_bytes"] == doc["meta"]["generic"]["weight_bytes"] > 0
    assert row["raw_bytes"] <= 600
    assert row["bpb"] > 0 and row["compress_kbps"] > 0
    assert doc["meta"]["generic"]["lossless_tokenization"] is True


def test_generic_rejects_a_path_that_is_not_a_model(tmp_path: Path) -> None:
    from tinyzip.bench import generic

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError):
        generic.resolve(tmp_path / "notes.txt")
    with pytest.raises(UsageError):
        generic.resolve(tmp_path)  # no config.json, no .gguf


def test_head_sample_is_cut_at_a_line_end() -> None:
    sample = cli.head_sample(LOG_LINES, 1000)
    assert sample.endswith(b"\n") and len(sample) <= 1000
    assert LOG_LINES.startswith(sample)


# --- CLI --------------------------------------------------------------------------------------


def test_help_lists_options_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model", "--adapt", "--generic", "--generic-max-bytes", "--json", "--md",
                 "--plot", "--codecs", "--dict-corpus", "examples:"):
        assert flag in text


def test_package_main_is_importable_without_torch() -> None:
    import subprocess

    code = ("import sys, tinyzip.bench, tinyzip.bench.cli; "
            "assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- tinyzip itself ---------------------------------------------------------------------------


def test_tinyzip_row_roundtrips_and_is_the_reference(corpus: Path, tmp_path: Path) -> None:
    # Model "zstd" goes through tinyzip's API and container without a predictor's setup cost.
    out = tmp_path / "r.json"
    cli.main([str(corpus), "--codecs", "gzip,tinyzip", "--model", "zstd",
              "--sample-bytes", "2000", "--json", str(out)])
    doc = json.loads(out.read_text())
    rows = {r["kind"]: r for r in doc["results"]}
    assert rows["tinyzip"]["roundtrip"] is True
    assert rows["tinyzip"]["model_bytes"] == 0  # no checkpoint: nothing to ship
    assert doc["meta"]["reference"] == rows["tinyzip"]["compressor"]
    assert rows["classic"]["break_even_bytes"] is not None
    assert all(r["raw_bytes"] <= 2000 for r in doc["files"])


def test_adapt_level_reaches_tinyzip_compress() -> None:
    import tinyzip

    codec = codecs.tinyzip_codec("cm", {"adapt": "fast"})
    assert codec.name == "tinyzip cm adapt=fast"
    blob = codec.compress(b"GET /a 200\n" * 40)
    assert codec.decompress(blob) == b"GET /a 200\n" * 40
    assert blob == tinyzip.compress(b"GET /a 200\n" * 40, "cm", adapt="fast")
    assert blob != tinyzip.compress(b"GET /a 200\n" * 40, "cm")
    with pytest.raises(UsageError, match="--adapt"):
        codecs.tinyzip_codec("cm", {"adapt": "turbo"}).compress(b"x")
