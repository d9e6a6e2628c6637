"""The disk cache of cm's state after the primer (model/primed_cache.py): a loaded state
is the learned one bit for bit, so archives are the same with it, without it and from a
cold cache; an entry that is corrupt, truncated, foreign or stale is never loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tinyzip.model import cm_transformer, primed_cache
from tinyzip.model import primer as primer_mod
from tinyzip.model.cm_transformer import CmTransformerPredictor
from tinyzip.model.context_mix import ContextMixPredictor

import tinyzip
from tests.test_cm_transformer import LOG, SMALL
from tests.test_primer import mixed, paths  # noqa: F401 (the fixture)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache on, in a folder of its own, and nothing kept by the process."""
    where = tmp_path / "cache"
    monkeypatch.setenv(primed_cache.ENV, str(where))
    cm_transformer.forget_primed_states()
    yield where
    cm_transformer.forget_primed_states()


def entries(where: Path) -> list[Path]:
    return sorted(where.glob("*" + primed_cache.SUFFIX)) if where.is_dir() else []


def never_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: CmTransformerPredictor, part: bytes) -> None:
        raise AssertionError("learned the primer: the cache was not used")

    monkeypatch.setattr(CmTransformerPredictor, "_learn", fail)


def zeros(name: str, lo: int, hi: int) -> np.ndarray:
    """Fresh values of a test table: all 0."""
    return np.zeros(hi - lo, dtype=np.int64)


def learned_state(primed: Path) -> dict[str, np.ndarray]:
    """cm's shared tables after reset, learned with the cache off."""
    os.environ[primed_cache.ENV] = "off"  # (the test's monkeypatch restores it)
    cm_transformer.forget_primed_states()
    pred = mixed(primed)
    pred.reset()
    return pred.cm.shared_state()


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(primed_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert primed_cache.cache_dir() == tmp_path / "tinyzip"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert primed_cache.cache_dir() == tmp_path / "home" / ".cache" / "tinyzip"
    with monkeypatch.context() as m:
        m.setattr(os.path, "expanduser", lambda p: p)  # no home at all
        assert primed_cache.cache_dir() is None
    for off in ("off", "", "0", "None"):
        monkeypatch.setenv(primed_cache.ENV, off)
        assert primed_cache.cache_dir() is None
        assert primed_cache.entry_path("k") is None
    monkeypatch.setenv(primed_cache.ENV, str(tmp_path / "c"))
    assert primed_cache.entry_path("k").parent == tmp_path / "c"
    assert primed_cache.entry_path("k") != primed_cache.entry_path("k2")


def test_archives_are_the_same_cold_warm_and_off(
    paths: tuple[Path, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, primed = paths
    cold = tinyzip.compress(LOG, model=mixed(primed), streams=1)
    (entry,) = entries(cache)
    with monkeypatch.context() as m:
        never_learn(m)
        warm = tinyzip.compress(LOG, model=mixed(primed), streams=1)
        assert tinyzip.compress(LOG, model=mixed(primed), streams=1) == warm
        # used twice: the process keeps the entry (the differences, not a copy of the tables)
        ((_, kept),) = cm_transformer._primed_states.items()
        assert sorted(kept) == sorted(mixed(primed).cm.SHARED_STATE)
        assert tinyzip.decompress(cold, model=mixed(primed)) == LOG
        cm_transformer.forget_primed_states()
        assert tinyzip.decompress(cold, model=mixed(primed, compiled=False)) == LOG
    monkeypatch.setenv(primed_cache.ENV, "off")
    cm_transformer.forget_primed_states()
    off = tinyzip.compress(LOG, model=mixed(primed), streams=1)
    assert cold == warm == off
    assert entries(cache) == [entry]


def test_a_loaded_state_is_the_learned_one(
    paths: tuple[Path, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, primed = paths
    mixed(primed).reset()  # learns, and writes the entry
    assert len(entries(cache)) == 1
    cm_transformer.forget_primed_states()
    with monkeypatch.context() as m:
        never_learn(m)
        pred = mixed(primed)
        pred.reset()
        loaded = pred.cm.shared_state()
    learned = learned_state(primed)
    assert loaded.keys() == learned.keys()
    for name in learned:
        np.testing.assert_array_equal(loaded[name], learned[name], err_msg=name)
    # the primer changed the tables, or this would prove little
    fresh = ContextMixPredictor(external_input=True, **SMALL)
    assert any((learned[n] != fresh.shared_state()[n]).any() for n in learned)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty", "key"])
def test_a_bad_entry_is_learned_anew_and_rewritten(
    paths: tuple[Path, Path], cache: Path, damage: str
) -> None:
    _, primed = paths
    good = tinyzip.compress(LOG, model=mixed(primed), streams=1)
    (entry,) = entries(cache)
    blob = bytearray(entry.read_bytes())
    if damage == "flip":
        blob[-5] ^= 0x10
    elif damage == "truncate":
        del blob[-9:]
    elif damage == "garbage":
        blob = bytearray(b"\x00" * 100)
    elif damage == "empty":
        blob = bytearray()
    else:  # another package version (or model) named the same file: its key differs
        blob = blob.replace(tinyzip.__version__.encode(), b"0.0.0-other", 1)
    entry.write_bytes(bytes(blob))
    pred = mixed(primed)
    tables = pred.cm.shared_state()
    assert not primed_cache.load(entry, primed_cache.entry_key(("anything",)), tables)
    cm_transformer.forget_primed_states()
    assert tinyzip.compress(LOG, model=mixed(primed), streams=1) == good
    assert entry.read_bytes() != bytes(blob)  # written anew: the next archive loads it
    cm_transformer.forget_primed_states()
    assert tinyzip.decompress(good, model=mixed(primed)) == LOG


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file owners")
def test_another_users_entry_is_not_trusted(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = primed_cache.entry_path("k")
    primed_cache.save(path, "k", primed_cache.differences({"a": np.arange(10, dtype=np.int64)},
                                                          zeros))
    assert primed_cache.load(path, "k", {"a": np.zeros(10, dtype=np.int64)})
    monkeypatch.setattr(os, "getuid", lambda: path.stat().st_uid + 1)
    assert not primed_cache.load(path, "k", {"a": np.zeros(10, dtype=np.int64)})


def test_a_cache_that_cannot_be_written_is_skipped(
    paths: tuple[Path, Path], cache: Path
) -> None:
    _, primed = paths
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"a file where the folder should be")
    blob = tinyzip.compress(LOG, model=mixed(primed), streams=1)
    assert tinyzip.decompress(blob, model=mixed(primed)) == LOG
    assert cache.read_bytes() == b"a file where the folder should be"
    # learned twice and not on disk: the process keeps it, as with the cache off
    ((_, kept),) = cm_transformer._primed_states.items()
    assert kept is not None


def test_only_the_whole_primer_and_its_least_part_are_kept(
    paths: tuple[Path, Path], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # inputs of 16-32 KB with the default learn parts of every length: one entry each
    # would push out the two that serve all other inputs
    _, primed = paths
    monkeypatch.setattr(primer_mod, "MIN_LEARNED", 80)
    primer = mixed(primed).checkpoint.primer
    least = primer_mod.learned_part(primer, 0)
    between = LOG[:150]  # 4 * 150 bytes: more than the least part, less than the whole
    assert len(least) < len(primer_mod.learned_part(primer, len(between))) < len(primer)
    for data, written in ((between, 0), (LOG[:10], 1), (LOG, 2)):
        blob = tinyzip.compress(data, model=mixed(primed), streams=1)
        assert len(entries(cache)) == written
        cm_transformer.forget_primed_states()
        assert tinyzip.decompress(blob, model=mixed(primed)) == data


def test_the_least_recently_used_entries_go_first(
    cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(primed_cache, "MAX_ENTRIES", 2)
    entry = primed_cache.differences({"a": np.arange(10, dtype=np.int64)}, zeros)
    paths = [primed_cache.entry_path(f"k{i}") for i in range(3)]
    for i, path in enumerate(paths[:2]):
        primed_cache.save(path, f"k{i}", entry)
        os.utime(path, (1000 + i, 1000 + i))
    assert primed_cache.load(paths[0], "k0", {"a": np.zeros(10, dtype=np.int64)})  # used now
    stale = cache / "dead-writer.tmp"
    stale.write_bytes(b"half")
    os.utime(stale, (1000, 1000))
    primed_cache.save(paths[2], "k2", entry)
    assert sorted(p.name for p in cache.iterdir()) == sorted(paths[i].name for i in (0, 2))


def small_tables() -> st.SearchStrategy:
    """Shared tables of a few sizes and their fresh values, some entries changed, some to
    values beyond 32 bits or negative (as the mixer's weights)."""
    value = st.one_of(st.integers(0, (1 << 32) - 1), st.integers(-(1 << 62), 1 << 62))
    table = st.lists(st.tuples(st.integers(0, 63), value), max_size=40)
    return st.fixed_dictionaries({"_t": table, "_w": table, "_e": st.just([])})


def fresh_of(name: str, lo: int, hi: int) -> np.ndarray:
    return (np.arange(lo, hi, dtype=np.int64) * 7 + len(name)) % 1000


@settings(max_examples=60, deadline=None)
@given(changes=small_tables(), where=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_save_then_load_is_exact_and_any_damaged_byte_refuses(
    tmp_path_factory: pytest.TempPathFactory, changes: dict, where: int, bit: int
) -> None:
    sizes = {"_t": 64, "_w": 64, "_e": 0}
    tables = {name: fresh_of(name, 0, n) for name, n in sizes.items()}
    for name, edits in changes.items():
        for i, v in edits:
            tables[name][i] = v
    path = tmp_path_factory.mktemp("entry") / ("e" + primed_cache.SUFFIX)
    entry = primed_cache.differences(tables, fresh_of)
    assert primed_cache.save(path, "key", entry)
    loaded = {name: fresh_of(name, 0, n) for name, n in sizes.items()}
    assert primed_cache.load(path, "key", loaded)
    for name in tables:
        np.testing.assert_array_equal(loaded[name], tables[name])
    # one damaged bit anywhere: refused, and the tables are left as they were
    whole = path.read_bytes()
    damaged = bytearray(whole)
    damaged[where % len(whole)] ^= 1 << bit
    path.write_bytes(bytes(damaged))
    before = {name: fresh_of(name, 0, n) for name, n in sizes.items()}
    after = {name: a.copy() for name, a in before.items()}
    assert not primed_cache.load(path, "key", after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])
    # ... as are tables of another size, and another key
    path.write_bytes(whole)
    other = {name: fresh_of(name, 0, n + (name == "_t")) for name, n in sizes.items()}
    assert not primed_cache.load(path, "key", other)
    assert not primed_cache.load(path, "key2", loaded)


@pytest.mark.parametrize("settings_", [{}, {"external_input": True}, {"level": 1}])
def test_fresh_values_are_what_reset_leaves(settings_: dict) -> None:
    cm = ContextMixPredictor(**settings_, **SMALL)
    cm.reset()
    for name, table in cm.shared_tables().items():
        np.testing.assert_array_equal(cm.fresh_values(name, 0, table.size), table)
        for lo, hi in ((1, 7), (table.size // 3, table.size // 3 + 5000)):
            lo, hi = min(lo, table.size), min(hi, table.size)
            np.testing.assert_array_equal(cm.fresh_values(name, lo, hi), table[lo:hi])


def test_differences_taken_in_pieces_are_the_same_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(7)
    tables = {name: fresh_of(name, 0, 100) for name in ("_t", "_w")}
    for table in tables.values():
        at = rng.choice(100, 30, replace=False)
        table[at] = rng.integers(-(1 << 40), 1 << 40, 30)
    whole = primed_cache.differences(tables, fresh_of)
    monkeypatch.setattr(primed_cache, "_PIECE", 7)
    pieces = primed_cache.differences(tables, fresh_of)
    assert len(pieces["_t"][1]) == 15  # 100 entries in pieces of 7
    for entry in (whole, pieces):  # in memory ...
        fresh = {name: fresh_of(name, 0, 100) for name in tables}
        primed_cache.apply(entry, fresh)
        for name in tables:
            np.testing.assert_array_equal(fresh[name], tables[name])
    # ... and on disk: the same bytes
    assert primed_cache.save(tmp_path / "a.primed", "k", whole)
    assert primed_cache.save(tmp_path / "b.primed", "k", pieces)
    assert (tmp_path / "a.primed").read_bytes() == (tmp_path / "b.primed").read_bytes()
    with pytest.raises(ValueError):
        primed_cache.apply(whole, {"_t": np.zeros(100, dtype=np.int64)})
