"""cm's primer (model/primer.py): built from a corpus, carried in the checkpoint and
checked there, learned before the data by encoder and decoder alike (compiled or the
lockstep reference), recorded in the archive; a hostile primer or descriptor is refused."""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyzip.coder.container import read_file_header
from tinyzip.data.corpus import find_corpus
from tinyzip.data.split import SplitConfig
from tinyzip.model import primer as primer_mod
from tinyzip.model.checkpoint import load_checkpoint, save_checkpoint
from tinyzip.model.cm_transformer import CmTransformerPredictor, from_descriptor
from tinyzip.model.context_mix import ContextMixPredictor

import tinyzip
from tests.test_cm_transformer import LOG, SMALL, needs_kernel
from tests.test_engine import _tiny_checkpoint
from tinyzip.errors import CheckpointError, CorruptInputError, UsageError

GOLDEN = Path(__file__).parent / "golden" / "primer.json"
PRIMER = (
    b"2016-12-19 15:59:58,001 INFO [Controller 0]: Broker 0 starting become controller\n"
    b"2016-12-19 15:59:58,210 WARN [Controller 0]: Partition [t,1] has no leader\n"
) * 10


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny test checkpoint, and the same with PRIMER as its primer."""
    d = tmp_path_factory.mktemp("primer")
    plain = _tiny_checkpoint(d / "tiny.tzm")
    primed = d / "tiny-primed.tzm"
    tensors = {k: v for k, v in plain.tensors.items() if not k.startswith("tokenizer.")}
    save_checkpoint(primed, config=plain.config, tensors=tensors,
                    tokenizer_table=plain.tokenizer_table, meta={"name": "tiny-primed"},
                    primer=PRIMER)  # fmt: skip
    return d / "tiny.tzm", primed


def mixed(path: Path, *, compiled: bool | None = None, primed: bool | None = None,
          **settings: Any) -> CmTransformerPredictor:
    cm = ContextMixPredictor(external_input=True, compiled=compiled, **SMALL)
    return CmTransformerPredictor(load_checkpoint(path), cm=cm, compiled=compiled, primed=primed,
                                  **settings)


def test_build_primer_takes_one_line_of_each_kind_from_every_file_in_turn(tmp_path: Path
                                                                         ) -> None:
    (tmp_path / "a.log").write_bytes(b"ok 1\nok 22\nerr 0x3\nok 4\n" + b"x" * 5000 + b"\nlast\n")
    (tmp_path / "b.log").write_bytes(b"ok 9\nwarn deadbeef01\nwarn cafe12345678\n")
    (tmp_path / "c.log").write_bytes(b"no newline")
    files = find_corpus(tmp_path).files
    # "ok N" is one kind (digits), so are the two warn lines (hex); too long a line and the
    # lines after the train fraction are left out; the files take turns
    assert primer_mod.build_primer(files, 1000) == b"ok 1\nwarn deadbeef01\nerr 0x3\nlast\n"
    assert primer_mod.build_primer(files, 1000, SplitConfig(val_fraction=0.4)) == b"ok 1\nwarn deadbeef01\nerr 0x3\n"
    assert primer_mod.build_primer(files, 9) == b"ok 1\n"  # the next line does not fit
    assert primer_mod.build_primer(files, 0) == b""


def test_a_short_input_learns_a_line_cut_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    primer = b"".join(b"line %03d\n" % i for i in range(100))  # 900 bytes
    assert primer_mod.learned_part(primer, None) == primer
    assert primer_mod.learned_part(primer, 225) == primer
    monkeypatch.setattr(primer_mod, "MIN_LEARNED", 100)
    assert primer_mod.learned_part(primer, 10) == primer[:99]  # 11 lines
    assert primer_mod.learned_part(primer, 50) == primer[:198]
    assert primer_mod.learned_part(primer, 224) == primer[:891]


def test_the_checkpoint_carries_the_primer_and_checks_it(paths: tuple[Path, Path]) -> None:
    plain, primed = paths
    assert load_checkpoint(plain).primer == b""
    ck = load_checkpoint(primed)
    assert ck.primer == PRIMER
    assert ck.meta[primer_mod.META] == {"bytes": len(PRIMER),
                                        "sha256": hashlib.sha256(PRIMER).hexdigest()}
    assert lzma.decompress(ck.tensors[primer_mod.TENSOR].tobytes()) == PRIMER  # packed as xz
    tensors = {k: v for k, v in ck.tensors.items() if not k.startswith("tokenizer.")}
    tensors.pop(primer_mod.TENSOR)
    # a primer whose bytes do not match its metadata, or that does not unpack
    good_tensor, _ = primer_mod.pack(PRIMER)
    bad_meta = {"bytes": len(PRIMER), "sha256": "0" * 64}
    for tensor, meta in ((good_tensor, bad_meta), (good_tensor[:-4], ck.meta[primer_mod.META]),
                         (good_tensor, {"bytes": primer_mod.MAX_PRIMER_BYTES + 1, "sha256": ""}),
                         (good_tensor, None)):
        with pytest.raises(CheckpointError, match="primer"):
            primer_mod.unpack(tensor, meta)
    # a bomb: far more bytes than the metadata says
    bomb = np.frombuffer(lzma.compress(b"\n" * (1 << 20)), dtype=np.uint8)
    with pytest.raises(CheckpointError, match="primer"):
        primer_mod.unpack(bomb, {"bytes": 10, "sha256": hashlib.sha256(b"\n" * 10).hexdigest()})


@needs_kernel
def test_learning_the_primer_compiled_equals_the_lockstep_reference(
    paths: tuple[Path, Path]
) -> None:
    _, primed = paths
    fast, slow = mixed(primed), mixed(primed, compiled=False)
    a = tinyzip.compress(LOG, model=fast, streams=1)
    b = tinyzip.compress(LOG, model=slow, streams=1)
    assert a == b
    assert tinyzip.decompress(a, model=fast) == LOG == tinyzip.decompress(a, model=slow)


@pytest.mark.parametrize("streams", [1, 3])
def test_a_primed_archive_round_trips_and_names_the_primer(
    paths: tuple[Path, Path], streams: int
) -> None:
    plain, primed = paths
    blob = tinyzip.compress(LOG, model=f"cm+{primed}", streams=streams, frame_size=120)
    header = read_file_header(io.BytesIO(blob))
    assert header.descriptor["primed"] is True
    assert header.model_id == load_checkpoint(primed).model_id
    assert tinyzip.decompress(blob, model=str(primed)) == LOG
    # a checkpoint without a primer writes the descriptor of before (no "primed")
    old = tinyzip.compress(LOG, model=f"cm+{plain}", streams=streams, frame_size=120)
    assert "primed" not in read_file_header(io.BytesIO(old)).descriptor


def payload(pred: CmTransformerPredictor, data: bytes) -> bytes:
    """The one-stream frame payload after what an archive does first (reset)."""
    pred.reset()
    grid = pred.to_symbols(data).astype(np.uint8)[None, :]
    out = pred.encode_frame(grid, np.array([grid.shape[1]]))
    if out is None:  # no compiled kernels: the archive's single chunk
        return tinyzip.compress(data, model=pred, streams=1)[-200:]
    return b"".join(out)


def test_writer_and_reader_learn_the_same_part(
    paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a short input learns a prefix of the primer, by the length in the header; a stream of
    # unknown length learns all of it: both decode, and the two archives differ
    _, primed = paths
    monkeypatch.setattr(primer_mod, "MIN_LEARNED", 80)
    data = LOG[:300]  # 4 * 300 bytes < the primer's 1,560
    assert primer_mod.learned_part(PRIMER, len(data)) != PRIMER
    short = tinyzip.compress(data, model=mixed(primed), streams=1)
    src, dst = io.BytesIO(data), io.BytesIO()
    tinyzip.compress_stream(src, dst, model=mixed(primed), streams=1)
    assert read_file_header(io.BytesIO(dst.getvalue())).original_size != len(data)
    assert short[-40:] != dst.getvalue()[-40:]
    for blob in (short, dst.getvalue()):
        assert tinyzip.decompress(blob, model=mixed(primed)) == data


def test_the_primer_pays_on_data_like_it(paths: tuple[Path, Path]) -> None:
    plain, primed = paths
    with_primer = payload(mixed(primed), LOG)
    without = payload(mixed(plain), LOG)
    assert len(with_primer) < len(without)
    # primed=False codes as a checkpoint without a primer does
    assert payload(mixed(primed, primed=False), LOG) == without


def test_primed_flag_and_descriptor_tampering(paths: tuple[Path, Path]) -> None:
    plain, primed = paths
    ck = load_checkpoint(primed)
    with pytest.raises(UsageError, match="no primer"):
        mixed(plain, primed=True)
    desc = mixed(primed).descriptor()
    assert desc["primed"] is True and "primed" not in mixed(primed, primed=False).descriptor()
    assert from_descriptor(json.loads(json.dumps(desc)), ck).descriptor() == desc
    for bad in (1, "true", None, 0):
        with pytest.raises(CorruptInputError, match="primed"):
            from_descriptor({**desc, "primed": bad}, ck)
    with pytest.raises(CorruptInputError):  # False is written as no key at all
        from_descriptor({**desc, "primed": False}, ck)
    with pytest.raises(CorruptInputError, match="no primer"):
        from_descriptor(desc, load_checkpoint(plain))
    # the count cap and the relaxed mixer (eighths kept): small ints, only beside the
    # primer; absent in archives before them
    for key, now, other, bads in (
        ("primer_counts", 1, 7, (-1, 1024, "2", True, 2.0, None, [2])),
        ("primer_mixer", 4, 8, (-1, 9, "4", True, 4.0, None, [4])),
    ):
        assert desc[key] == getattr(mixed(primed), key) == now
        legacy = {k: v for k, v in desc.items() if k != key}
        assert getattr(from_descriptor(legacy, ck), key) is None
        assert key not in from_descriptor(legacy, ck).descriptor()
        assert from_descriptor({**desc, key: other}, ck).descriptor()[key] == other
        for bad in bads:
            with pytest.raises(CorruptInputError, match=key):
                from_descriptor({**desc, key: bad}, ck)
        with pytest.raises(CorruptInputError, match=key):
            from_descriptor({**mixed(primed, primed=False).descriptor(), key: now}, ck)


def test_the_mixer_is_relaxed_by_default_at_level_3_alone(paths: tuple[Path, Path]) -> None:
    _, primed = paths
    ck = load_checkpoint(primed)
    for level, keep in ((1, None), (3, 4)):
        cm = ContextMixPredictor(level=level, external_input=True, table_bits=10)
        assert CmTransformerPredictor(ck, cm=cm).primer_mixer == keep
    cm = ContextMixPredictor(level=1, external_input=True, table_bits=10)
    assert CmTransformerPredictor(ck, cm=cm, primer_mixer=2).descriptor()["primer_mixer"] == 2
    with pytest.raises(UsageError, match="primer_mixer"):
        CmTransformerPredictor(ck, cm=cm, primer_mixer="4")


def test_primed_archive_bytes_match_golden_hash(paths: tuple[Path, Path]) -> None:
    _, primed = paths
    # b1, b3: the mixer as the primer left it (archives before primer_mixer, code 35)
    got = {
        f"b{streams}{suffix}": hashlib.sha256(
            tinyzip.compress(LOG + bytes(range(256)), model=mixed(primed, primer_mixer=keep),
                             streams=streams, frame_size=400)
        ).hexdigest()
        for suffix, keep in (("", None), ("_mixer4", 4))
        for streams in (1, 3)
    }
    if os.environ.get("TINYZIP_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=2) + "\n")
    assert got == json.loads(GOLDEN.read_text())


def test_attach_command_writes_a_primed_copy(paths: tuple[Path, Path], tmp_path: Path) -> None:
    plain, _ = paths
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "x.log").write_bytes(PRIMER * 4)
    out = tmp_path / "out.tzm"
    assert primer_mod.main([str(plain), "--corpus", str(tmp_path / "corpus"), "--bytes", "200",
                            "-o", str(out)]) == 0
    ck, base = load_checkpoint(out), load_checkpoint(plain)
    assert ck.primer == PRIMER.split(b"\n")[0] + b"\n" + PRIMER.split(b"\n")[1] + b"\n"
    assert all(np.array_equal(ck.tensors[k], v) for k, v in base.tensors.items())
    assert ck.meta["name"] == "tiny-test"


@needs_kernel
def test_cap_counts_caps_the_counters_alone_compiled_as_in_numpy() -> None:
    from tinyzip.model.context_mix import N_BITS, N_MASK, P_HALF

    fast = ContextMixPredictor(external_input=True, **SMALL)
    fast.reset()
    grid = fast.to_symbols(LOG + PRIMER).astype(np.uint8)[None, :]
    fast.encode_frame(grid, np.array([grid.shape[1]]), external=lambda first, count: np.ones(
        (1, count, 256), dtype=np.int64))
    slow = ContextMixPredictor(external_input=True, compiled=False, **SMALL)
    slow.reset()
    slow.load_shared_state(fast.shared_state())
    before = fast.shared_state()
    for cm in (fast, slow):
        cm.cap_counts(3)
    for name, after in fast.shared_state().items():
        assert np.array_equal(after, getattr(slow, name)), name
    end = fast._w_off
    t0, t1 = before["_t"][:end], fast._t[:end]
    check = (np.arange(end) < fast._match_off) & (np.arange(end) % 16 == 0)
    assert np.array_equal(t0[check], t1[check])  # slot checks stay
    assert (t0[check] != P_HALF << N_BITS).any()  # (slots were claimed)
    assert ((t0[~check] & N_MASK) > 3).any()  # there was something to cap ...
    assert ((t1[~check] & N_MASK) <= 3).all()  # ... and every count is capped
    assert np.array_equal(t0 >> 10, t1 >> 10)  # probabilities stay
    assert np.array_equal(before["_t"][end:], fast._t[end:])  # mixer weights stay
    assert ((fast._apm3 & N_MASK) <= 3).all() and ((fast._apm4 & N_MASK) <= 3).all()
    with pytest.raises(ValueError, match="cap"):
        fast.cap_counts(N_MASK + 1)


def test_relax_mixer_moves_the_weights_alone_back_toward_their_start() -> None:
    cm = ContextMixPredictor(external_input=True, compiled=False, **SMALL)
    cm.reset()
    start = cm._t.copy()
    rng = np.random.default_rng(5)
    cm._t[cm._w_off :] += rng.integers(-50_000, 50_000, cm._t.size - cm._w_off)
    learned = cm._t.copy()
    cm.relax_mixer(8)
    assert np.array_equal(cm._t, learned)  # 8 eighths: all kept
    cm.relax_mixer(4)
    ab, ext = slice(cm._w_off, cm._wx_off), slice(cm._wx_off, cm._ext_w_off)
    init = cm.mixer_init // 2
    assert np.array_equal(cm._t[ab], init + (learned[ab] - init) // 2)
    assert np.array_equal(cm._t[ext], learned[ext] // 2)  # the extra sets start at 0
    assert np.array_equal(cm._t[: cm._w_off], learned[: cm._w_off])  # counters, APMs stay
    assert np.array_equal(cm._t[cm._ext_w_off :], learned[cm._ext_w_off :])  # external too
    cm.relax_mixer(0)
    assert np.array_equal(cm._t[: cm._ext_w_off], start[: cm._ext_w_off])
    for bad in (-1, 9):
        with pytest.raises(ValueError, match="keep"):
            cm.relax_mixer(bad)


def test_the_default_primed_descriptors_have_codes() -> None:
    from tinyzip.coder.container import FileHeader

    for preset in ("l3-2026-12o+external", "l1-2026-12+external"):
        # before the count cap, and since (level 3: the mixer relaxed after the primer too)
        relaxed = [{"primer_counts": 1, "primer_mixer": 4}] if preset.startswith("l3") else []
        for cap in ({}, {"primer_counts": 1}, *relaxed):
            desc = {"name": "cm+transformer", "name_hint": "m", "primed": True,
                    "cm": {"name": "cm", "preset": preset, "version": 1}, **cap}
            head = FileHeader(bytes(32), 1 << 19, 1000, desc).to_bytes()
            assert b"primed" not in head and len(head) < 60
            assert read_file_header(io.BytesIO(head)).descriptor == desc


def test_a_primer_learned_twice_is_kept_and_codes_the_same(paths: tuple[Path, Path]) -> None:
    from tinyzip.model import cm_transformer

    _, primed = paths
    cm_transformer._primed_states.clear()
    blobs = [tinyzip.compress(LOG, model=mixed(primed), streams=1) for _ in range(3)]
    # the first learned it and noted it, the second learned it again and kept it, the
    # third started from what was kept: the same archive all three times
    ((_, kept),) = cm_transformer._primed_states.items()
    assert kept is not None
    assert blobs[0] == blobs[1] == blobs[2]
    assert tinyzip.decompress(blobs[2], model=mixed(primed, compiled=False)) == LOG
