"""tinyzip.data: corpus discovery, split, tokenizers, memory-mapped token files."""

from __future__ import annotations

import gzip
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tinyzip.data.corpus import find_corpus
from tinyzip.data.split import SplitConfig, sample_blocks, split_corpus
from tinyzip.data.tokenizer import (
    BYTE_TO_CHAR,
    BpeTokenizer,
    ByteTokenizer,
    bytes_to_text,
    load_tokenizer,
    text_to_bytes,
    tokenizer_from_table,
)
from tinyzip.data.tokens import TokenStore, build_token_files

from tinyzip.errors import UsageError

LOG = b"".join(
    b"2016-12-19 16:31:%02d,%03d INFO [Controller %d]: partition [test,%d] moved to broker %d\n"
    % (i % 60, i * 7 % 1000, i % 3, i % 5, i % 7)
    for i in range(400)
)
INVALID_UTF8 = b"\xff\xfe caf\xc3 \xed\xa0\x80 ok\x01\n\n    \xc3\xa9t\xc3\xa9 \x80\x80\xbf"


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    pytest.importorskip("tokenizers")
    return BpeTokenizer.train([LOG, INVALID_UTF8], vocab_size=512)


# --- corpus discovery -------------------------------------------------------------------


def test_directory_is_walked_recursively_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path / "b.log", b"bbb\n")
    write(tmp_path / "sub" / "deeper" / "a.log", b"aaa\n")
    write(tmp_path / "a.log", b"top\n")
    corpus = find_corpus(tmp_path)
    assert [f.rel for f in corpus.files] == ["a.log", "b.log", "sub/deeper/a.log"]
    assert corpus.skipped == ()


def test_gz_xz_zst_members_are_read_decompressed(tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    write(tmp_path / "a.log.gz", gzip.compress(LOG))
    write(tmp_path / "b.log.xz", lzma.compress(LOG[:1000]))
    # two concatenated zstd frames form one member, as with gzip
    cctx = zstandard.ZstdCompressor()
    write(tmp_path / "c.log.zst", cctx.compress(LOG[:500]) + cctx.compress(LOG[500:900]))
    corpus = find_corpus(tmp_path)
    by_name = {f.rel: f for f in corpus.files}
    assert by_name["a.log.gz"].codec == "gzip"
    assert by_name["a.log.gz"].read_bytes() == LOG
    assert by_name["b.log.xz"].read_bytes() == LOG[:1000]
    assert by_name["c.log.zst"].read_bytes() == LOG[:900]
    assert by_name["c.log.zst"].raw_bytes() == 900


def test_hidden_files_and_folders_are_reported_not_used(tmp_path: Path) -> None:
    write(tmp_path / "app.log", LOG)
    write(tmp_path / ".swap.log", LOG)
    write(tmp_path / ".git" / "objects" / "x", LOG)
    corpus = find_corpus(tmp_path)
    assert [f.rel for f in corpus.files] == ["app.log"]
    assert {(s.rel, s.reason) for s in corpus.skipped} == {(".swap.log", "hidden"),
                                                           (".git/", "hidden")}
    assert [f.rel for f in find_corpus(tmp_path, include_hidden=True).files] == [
        ".git/objects/x", ".swap.log", "app.log"]


def test_binary_empty_and_damaged_files_are_reported_with_reason(tmp_path: Path) -> None:
    write(tmp_path / "ok.log", LOG)
    write(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(300))
    write(tmp_path / "controls.bin", bytes(range(1, 32)) * 20)
    write(tmp_path / "empty.log", b"")
    write(tmp_path / "broken.log.gz", gzip.compress(LOG)[:15])
    reasons = {s.rel: s.reason for s in find_corpus(tmp_path).skipped}
    assert reasons["image.png"].startswith("binary")
    assert reasons["controls.bin"].startswith("binary")
    assert reasons["empty.log"] == "empty"
    assert reasons["broken.log.gz"].startswith("unreadable")


def test_invalid_utf8_text_is_not_taken_for_binary(tmp_path: Path) -> None:
    write(tmp_path / "latin1.log", LOG + b"caf\xe9 \xff\xfe\n" * 10 + b"\x1b[31mred\x1b[0m\n")
    assert [f.rel for f in find_corpus(tmp_path).files] == ["latin1.log"]


def test_glob_and_file_list_select_files(tmp_path: Path) -> None:
    write(tmp_path / "x" / "a.log", b"a\n")
    write(tmp_path / "x" / "b.txt", b"b\n")
    write(tmp_path / "y" / "c.log", b"c\n")
    assert [f.rel for f in find_corpus(str(tmp_path / "**" / "*.log")).files] == [
        "x/a.log", "y/c.log"]
    listed = find_corpus([tmp_path / "y" / "c.log", tmp_path / "x" / "b.txt"])
    assert [f.rel for f in listed.files] == ["x/b.txt", "y/c.log"]
    mixed = find_corpus([tmp_path / "x", str(tmp_path / "y" / "*.log")])
    assert [f.rel for f in mixed.files] == ["x/a.log", "x/b.txt", "y/c.log"]
    with pytest.raises(UsageError, match="not found"):
        find_corpus([tmp_path / "x", tmp_path / "nope.log"])


def test_empty_corpus_is_a_one_line_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "empty.log", b"")
    with pytest.raises(UsageError) as err:
        find_corpus(tmp_path)
    assert "no usable corpus files" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="not found"):
        find_corpus(tmp_path / "missing")


def test_summary_hash_depends_on_the_file_list_only(tmp_path: Path) -> None:
    write(tmp_path / "one" / "a.log", b"a\n")
    write(tmp_path / "one" / "b.log", b"b\n")
    write(tmp_path / "two" / "b.log", b"other content\n")
    write(tmp_path / "two" / "a.log", b"more\n")
    one, two = find_corpus(tmp_path / "one").summary(), find_corpus(tmp_path / "two").summary()
    assert one.n_files == 2 and one.disk_bytes == 4
    assert one.files_sha256 == two.files_sha256
    write(tmp_path / "two" / "c.log", b"c\n")
    assert find_corpus(tmp_path / "two").summary().files_sha256 != one.files_sha256


# --- split ------------------------------------------------------------------------------


def test_split_takes_the_tail_of_each_file_deterministically(tmp_path: Path) -> None:
    write(tmp_path / "a.log", LOG)
    write(tmp_path / "b.log.gz", gzip.compress(LOG[:1000]))
    corpus = find_corpus(tmp_path)
    split = split_corpus(corpus, SplitConfig(val_fraction=0.1))
    assert split == split_corpus(corpus, SplitConfig(val_fraction=0.1))
    train = {s.file.rel: (s.start, s.stop) for s in split.train}
    val = {s.file.rel: (s.start, s.stop) for s in split.val}
    n = len(LOG)
    assert train["a.log"] == (0, n - n // 10) and val["a.log"] == (n - n // 10, n)
    assert train["b.log.gz"] == (0, 900) and val["b.log.gz"] == (900, 1000)
    head, tail = (b"".join(s.iter_blocks(block_bytes=37)) for s in
                  (split.train[1], split.val[1]))
    assert head + tail == LOG[:1000] and tail == LOG[900:1000]


def test_holdout_glob_puts_whole_files_in_validation(tmp_path: Path) -> None:
    write(tmp_path / "seen" / "a.log", LOG)
    write(tmp_path / "unseen" / "b.log", LOG)
    split = split_corpus(find_corpus(tmp_path), SplitConfig(val_fraction=0.0,
                                                            holdout=("unseen/*",)))
    assert [(s.file.rel, s.start, s.stop) for s in split.train] == [("seen/a.log", 0, len(LOG))]
    assert [(s.file.rel, s.start, s.stop) for s in split.val] == [("unseen/b.log", 0, len(LOG))]
    by_base = split_corpus(find_corpus(tmp_path), SplitConfig(holdout=("b.log",)))
    assert [s.file.rel for s in by_base.val] == ["seen/a.log", "unseen/b.log"]


def test_split_without_validation_text_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "a.log", LOG)
    with pytest.raises(UsageError, match="--val-fraction"):
        split_corpus(find_corpus(tmp_path), SplitConfig(val_fraction=0.0))
    with pytest.raises(UsageError, match="--val-fraction"):
        SplitConfig(val_fraction=1.5)


def test_sample_blocks_caps_bytes_and_draws_from_every_file(tmp_path: Path) -> None:
    write(tmp_path / "a.log", b"a" * 10_000)
    write(tmp_path / "b.log", b"b" * 30_000)
    split = split_corpus(find_corpus(tmp_path), SplitConfig(val_fraction=0.5))
    sample = b"".join(sample_blocks(split.train, max_bytes=4_000))
    assert sample == b"a" * 1_000 + b"b" * 3_000


# --- tokenizers -------------------------------------------------------------------------


def test_byte_map_is_a_bijection_onto_single_characters() -> None:
    assert len(set(BYTE_TO_CHAR)) == 256
    data = bytes(range(256)) * 3
    assert len(bytes_to_text(data)) == len(data)
    assert text_to_bytes(bytes_to_text(data)) == data


def test_byte_tokenizer_roundtrips_any_bytes() -> None:
    tok = ByteTokenizer()
    data = os.urandom(3000) + INVALID_UTF8
    assert tok.vocab_size == 256
    assert tok.decode(tok.encode(data)) == data
    assert tok.id_to_bytes()[65] == b"A"


def test_byte_tokenizer_needs_no_tokenizers_library() -> None:
    code = (
        "import sys; sys.modules['tokenizers'] = None\n"
        "from tinyzip.data.tokenizer import ByteTokenizer\n"
        "t = ByteTokenizer(); assert t.decode(t.encode(b'\\xff x')) == b'\\xff x'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("data", [INVALID_UTF8, b"", b"\x00", LOG[:777] + INVALID_UTF8 + b"\x00"])
def test_bpe_roundtrips_invalid_utf8(bpe: BpeTokenizer, data: bytes) -> None:
    assert bpe.decode(bpe.encode(data)) == data


def test_bpe_roundtrips_random_bytes(bpe: BpeTokenizer) -> None:
    rng = np.random.default_rng(7)
    for n in (1, 17, 4096):
        data = rng.integers(0, 256, size=n, dtype=np.uint8).tobytes()
        assert bpe.decode(bpe.encode(data)) == data


def test_bpe_learns_merges_that_shorten_logs(bpe: BpeTokenizer) -> None:
    # a tiny text has fewer frequent pairs than the 512 asked for: the vocabulary stops short
    assert 256 < bpe.vocab_size <= 512
    assert len(bpe.encode(LOG)) < len(LOG) / 2
    table = bpe.id_to_bytes()
    assert sorted(b for b in table if len(b) == 1) == [bytes([i]) for i in range(256)]
    assert b"Controller" in table


def test_bpe_save_load_keeps_table_and_encoding(bpe: BpeTokenizer, tmp_path: Path) -> None:
    bpe.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(again, BpeTokenizer)
    assert again.id_to_bytes() == bpe.id_to_bytes()
    assert again.fingerprint() == bpe.fingerprint()
    assert np.array_equal(again.encode(LOG), bpe.encode(LOG))
    ByteTokenizer().save(tmp_path / "byte.json")
    assert isinstance(load_tokenizer(tmp_path / "byte.json"), ByteTokenizer)


def test_bpe_vocab_size_outside_range_is_rejected() -> None:
    with pytest.raises(UsageError, match="--vocab-size"):
        BpeTokenizer.train([LOG], vocab_size=300)
    with pytest.raises(UsageError, match="--vocab-size"):
        BpeTokenizer.train([LOG], vocab_size=9000)


# --- token files ------------------------------------------------------------------------


def test_token_files_decode_back_to_the_split_bytes(bpe: BpeTokenizer, tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "a.log", LOG)
    write(tmp_path / "corpus" / "b.log.gz", gzip.compress(LOG[:3000] + INVALID_UTF8))
    corpus = find_corpus(tmp_path / "corpus")
    split = split_corpus(corpus, SplitConfig(val_fraction=0.2))
    store = build_token_files(corpus, split, bpe, tmp_path / "tok", block_bytes=500)
    assert isinstance(store.train.tokens, np.memmap)
    assert store.train.tokens.dtype == np.uint16
    expected = {name: b"".join(b"".join(s.iter_blocks()) for s in segs)
                for name, segs in (("train", split.train), ("val", split.val))}
    assert bpe.decode(np.asarray(store.train.tokens)) == expected["train"]
    assert bpe.decode(np.asarray(store.val.tokens)) == expected["val"]
    assert store.train.n_bytes == len(expected["train"])
    reopened = TokenStore.open(tmp_path / "tok")
    assert np.array_equal(reopened.val.tokens, store.val.tokens)
    assert reopened.index["corpus"]["n_files"] == 2


def test_token_files_are_reused_until_the_corpus_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "corpus" / "a.log", LOG)
    tok = ByteTokenizer()

    def build() -> TokenStore:
        corpus = find_corpus(tmp_path / "corpus")
        return build_token_files(corpus, split_corpus(corpus), tok, tmp_path / "tok")

    first = build()
    mtime = (tmp_path / "tok" / "train.bin").stat().st_mtime_ns
    assert build().index == first.index
    assert (tmp_path / "tok" / "train.bin").stat().st_mtime_ns == mtime
    path.write_bytes(LOG + LOG)
    assert len(build().train) + len(build().val) == 2 * len(LOG)


def test_random_windows_are_seeded_and_inside_the_array(tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "a.log", LOG)
    corpus = find_corpus(tmp_path / "corpus")
    store = build_token_files(corpus, split_corpus(corpus), ByteTokenizer(), tmp_path / "tok")
    a = store.train.sample_windows(np.random.default_rng(3), 8, 65)
    b = store.train.sample_windows(np.random.default_rng(3), 8, 65)
    assert a.shape == (8, 65) and a.dtype == np.int64
    assert np.array_equal(a, b)
    data = np.frombuffer(LOG, dtype=np.uint8)
    for row in a:  # every window is a real slice of the text
        starts = np.flatnonzero(data[: len(data) - 64] == row[0])
        assert any(np.array_equal(data[s:s + 65], row) for s in starts)
    with pytest.raises(UsageError, match="fewer than one window"):
        store.train.sample_windows(np.random.default_rng(0), 1, len(store.train) + 1)


def test_sequential_windows_cover_every_token_once(tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "a.log", LOG)
    corpus = find_corpus(tmp_path / "corpus")
    store = build_token_files(corpus, split_corpus(corpus, SplitConfig(0.3)), ByteTokenizer(),
                              tmp_path / "tok")
    windows = list(store.val.sequential_windows(100))
    assert len(windows) == store.val.n_windows(100) == -(-len(store.val) // 100)
    joined = np.concatenate([w.tokens[: w.n_valid] for w in windows])
    assert np.array_equal(joined, store.val.tokens)
    assert all(w.tokens.shape == (100,) for w in windows)
    subset = [w.tokens for w in store.val.sequential_windows(100, max_windows=3)]
    assert len(subset) == 3
    assert np.array_equal(subset[0], windows[0].tokens)
    assert np.array_equal(subset[-1], windows[-1].tokens)


def test_table_and_merges_rebuild_the_same_bpe_encoder(bpe: BpeTokenizer) -> None:
    spec = bpe.checkpoint_spec()
    assert spec["kind"] == "bpe" and spec["merges"]
    again = tokenizer_from_table(bpe.id_to_bytes(), spec)
    assert np.array_equal(again.encode(LOG + INVALID_UTF8), bpe.encode(LOG + INVALID_UTF8))
    assert isinstance(tokenizer_from_table(ByteTokenizer().id_to_bytes(),
                                           ByteTokenizer().checkpoint_spec()), ByteTokenizer)
    with pytest.raises(UsageError):
        tokenizer_from_table(bpe.id_to_bytes()[:-1], spec)


def test_bpe_encodes_long_inputs_in_pieces_with_the_same_ids(
    bpe: BpeTokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tinyzip.data.tokenizer as tokenizer_module

    data = (LOG + b"\n\n  indented\n\tTab\n" + INVALID_UTF8) * 3
    whole = bpe.encode(data)
    monkeypatch.setattr(tokenizer_module, "ENCODE_PIECE_BYTES", 100)
    assert len(tokenizer_module.safe_cuts(data, 100)) > 10
    assert np.array_equal(bpe.encode(data), whole)
