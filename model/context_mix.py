"""The reference adaptive predictor: bitwise context mixing, integer only, over B streams.

An lpaq-style model that needs no training. Each byte is coded as 8 binary decisions,
most significant bit first. For every bit, a set of contexts (order-0..6 byte contexts,
a word hash, log-line structure: the byte above in the previous line, the field index)
each select a 16-entry slot of adaptive bit counters; a match model predicts the bit that
followed the longest recent repeat; a logistic mixer (the sum of weight sets chosen by
the partial byte, the match state, the last bytes, the field and the column) combines
their stretched probabilities; two APM/SSE stages refine
the result. Every number is an integer and every nonlinearity a lookup table built with
integer arithmetic, so encoder and decoder agree bit for bit on every machine.

State layout (see docs/context_mix.md):

* shared by all streams, kept by ``begin`` and cleared by ``reset``: the counter table
  (all contexts and the match model's counters in one flat int64 array), the mixer
  weights, the APM tables. The B streams of a frame are chunks of one file, so they learn
  from each other. Several streams may hit the same entry in one step: every update is an
  integer delta computed from the pre-step values and applied with ``np.add.at``
  (addition commutes, so the result does not depend on the order of the streams).
* per stream, cleared by ``begin``: the last 8 bytes, the partial byte, the word / column /
  field state, the match pointer, and the stream's row of the match history buffer.

With ``external_input=True`` the mixer has one more input: P(next bit) from a 256-entry
table per byte given by the caller (``set_external``); cm+transformer
(model/cm_transformer.py) feeds it a checkpoint's distribution.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
from tinyzip.model.predictor import Predictor, active_counts

from tinyzip.errors import CorruptInputError

try:  # the compiled predict/update (model/_cm_kernel.c); optional, same results
    from tinyzip.model import _cm_kernel
except ImportError:  # no compiler at install time: the numpy code below runs
    _cm_kernel = None

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

VERSION = 1

#: Contexts a model may use, in the order they appear as mixer inputs.
#: o0..o6: the last k bytes; word: hash of the current alphanumeric word (and the byte
#: before it); bigram: the previous word with the current one; column: the byte above in
#: the previous line with the last byte; field: the space-separated field index of the
#: line with the current word; sparse: the 2nd and 3rd last bytes; o8: the last 8 bytes;
#: linepos: the position in the line with the last byte; shape: the classes (digit,
#: letter, space, ...) of the last 8 bytes with the last byte; above2: the byte above with
#: the last two bytes; shapefield: the classes of the last 4 bytes with the field index
#: and the last byte; template: the line so far with every digit run collapsed to one
#: marker (the log statement being printed, whatever its numbers), with the last byte;
#: ind2: the last two bytes, with the two bytes that followed them the last time they
#: occurred (paq's indirect context); matchbyte: the byte the match model predicts (or
#: none) with its length (saturating) and the last byte (matchbyte3: the last three
#: bytes); wordskip: the word so far, the last byte and the word before the previous one;
#: headabove: the template of the line above's first HEAD_BYTES bytes (which kind of
#: line came before), this line's template so far and the last byte; blankpos: linepos,
#: but on a line blank so far (spaces and tabs) the byte above instead of the position
#: (javac's caret lines mirror the tabs of the line above) (the others:
#: docs/context_mix.md).
#: Names are only ever appended: an archive lists its contexts, so
#: older archives keep decoding. On loghub (one stream, each file alone, 2**21 tables):
#: the first eleven 0.4263 bpb, + sparse 0.4252, + o8 0.4260, + linepos 0.4115, + shape
#: 0.4142, + both 0.4053; then with 2**20 tables 0.4078, + above2 0.4050, + shapefield
#: 0.4053, + both 0.4028 (a column-with-word context: no gain).
CONTEXT_NAMES = (
    "o0", "o1", "o2", "o3", "o4", "o5", "o6", "word", "bigram", "column", "field",
    "sparse", "o8", "linepos", "shape", "above2", "shapefield", "template", "ind2",
    "matchbyte", "ptemplate", "fieldabove", "tmplabove", "tokabove", "tmplcmp", "tokcmp",
    "keyvalue", "tokrun", "ind1", "ind4", "align", "tmplnext", "wordgap", "blockword",
    "charmask", "gapwords", "keyword", "tmplnext2", "matchbyte3", "wordskip", "headabove",
    "blankpos",
)  # fmt: skip

#: ``level`` presets: fewer contexts run somewhat faster and take less memory (numpy call
#: count per bit hardly depends on the number of contexts; array widths and per-byte
#: hashing do).
LEVELS: dict[int, tuple[str, ...]] = {
    1: ("o1", "o2", "o3", "o4"),
    2: ("o0", "o1", "o2", "o3", "o4", "o6"),
    # (o5 gave way to template: loghub 0.3588 -> 0.3562 bpb; dropping o5 alone cost
    # nothing measurable, 0.3562 either way)
    # (ind2 and matchbyte came with slot_check: see PRESETS["l3-2026-12"]; ptemplate,
    # fieldabove, tmplabove and tokabove with PRESETS["l3-2026-12b"]; tmplcmp and tokcmp
    # with PRESETS["l3-2026-12c"]; keyvalue, and tokrun in tokcmp's place, with
    # PRESETS["l3-2026-12d"]; ind1, ind4 and align with PRESETS["l3-2026-12g"]; tmplnext
    # with PRESETS["l3-2026-12i"]; wordgap, blockword, charmask and gapwords in the place
    # of word and field with PRESETS["l3-2026-12j"]; keyword and tmplnext2 with
    # PRESETS["l3-2026-12k"]; column and above2 left with PRESETS["l3-2026-12l"];
    # matchbyte3 in matchbyte's place, and wordskip, with PRESETS["l3-2026-12m"];
    # headabove with PRESETS["l3-2026-12n"]; blankpos in linepos's place with
    # PRESETS["l3-2026-12o"])
    3: (
        "o0", "o1", "o2", "o3", "o4", "o6", "bigram", "shape", "shapefield",
        "template", "ind2", "ptemplate", "fieldabove", "tmplabove", "tokabove",
        "tmplcmp", "keyvalue", "tokrun", "ind1", "ind4", "align", "tmplnext", "wordgap",
        "blockword", "charmask", "gapwords", "keyword", "tmplnext2", "matchbyte3", "wordskip",
        "headabove", "blankpos",
    ),
}  # fmt: skip
DEFAULT_LEVEL = 3

#: Extra mixer weight sets, each chosen per bit by one more context (with the bit
#: position); their weights add to those of sets A and B, so each is a correction that
#: only that context's situations train. Name -> number of context values:
#: field: the field index (saturating at 63); column: the position in the line
#: (saturating at 63); shape2: the classes of the last two bytes; byte2: the second last
#: byte; above: the byte above (256: none); match: the match length (saturating at 31)
#: with the bit the match predicts. Names are only ever appended (an archive lists its
#: selectors; archives without the list used none). On loghub (one stream, each file
#: alone): none 0.3913 bpb, field 0.3783, column 0.3819, shape2 0.3828, byte2 0.3842,
#: above 0.3858, match 0.3803, all six 0.3622 (a two-layer mixer over the same sets:
#: 0.3784; adding o2-hash and word-hash selectors: 0.3612).
MIXER_SELECTORS: dict[str, int] = {
    "field": 64, "column": 64, "shape2": 64, "byte2": 256, "above": 257, "match": 64,
    "tabove": 257,
}  # fmt: skip
#: tabove: the byte the tmplabove context predicts (256: none). Beside that context it
#: takes the place of above (256 KiB sample, cm alone: 424,336 -> 423,332 bytes; as a
#: seventh set beside above only 424,198), so level 1 keeps the six before it.
DEFAULT_MIXER_SELECTORS = ("field", "column", "shape2", "byte2", "above", "match")
TEMPLATE_MIXER_SELECTORS = ("field", "column", "shape2", "byte2", "match", "tabove")

# Bounds for parameters read from an archive header: a hostile header must not make the
# decoder allocate more than about 2**24 entries per table (128 MiB of int64).
MAX_TABLE_BITS = 24
# ... and all shared tables together at most 2**25 int64 entries (256 MiB); the defaults
# use 33.4 M (the 30 hashed contexts of level 3 at 2**20 counters each, the mixer weights
# and APMs: 255 MiB since headabove, l3-2026-12n): no room for another context at level 3
# without raising this bound.
MAX_TOTAL_ENTRIES = 1 << 25
MIN_TABLE_BITS = 10
# The match table stores (position + 1) << 16 | row, so rows must fit in 16 bits; the
# history ring is at least 1 KiB per stream.
MAX_STREAMS = 1 << 16
MAX_FIELD = 63  # field indices saturate here

# Counter entries pack a 22-bit probability of a 1 and a 10-bit count: v = p << 10 | n.
# They live in int64 because k streams adding deltas to one entry in the same step can
# push p outside [0, 2**22). Readers clip p, and every delta is computed from the CLIPPED
# value, so an entry overshoots by at most k * rate * 2**22 and cannot run away (deltas
# from the raw value would oscillate with growing amplitude once k * rate > 2). The count
# can likewise pass its limit by up to k - 1; limits stay <= 896 so that it fits for
# k <= 128 (beyond, a carry moves p by 2**-22: harmless, and still deterministic).
P_BITS = 22
P_MAX = (1 << P_BITS) - 1
N_BITS = 10
N_MASK = (1 << N_BITS) - 1
P_HALF = 1 << (P_BITS - 1)

# Odd 64-bit constants for multiplicative (Fibonacci) hashing; uint64 products wrap.
_H1 = 0x9E3779B97F4A7C15
_H2 = 0xC2B2AE3D27D4EB4F
_H3 = 0x165667B19E3779F9
_TEMPLATE_DIGITS = 0x1234  # what a digit run adds to the template hash


def _squash_table() -> I64:
    """squash(x) = 4096 / (1 + e^(-x/256)) for x in [-2047, 2047], as 12-bit integers.

    Interpolated from lpaq1's 33 stored points with integer arithmetic only, so the
    table is identical on every machine (no libm call anywhere).
    """
    pts = [
        int(v)
        for v in (
            "1 2 3 6 10 16 27 45 73 120 194 310 488 747 1101 1546 2047 2549 2994 3348 3607 "
            "3785 3901 3975 4022 4050 4068 4079 4085 4089 4092 4093 4094"
        ).split()
    ]
    out = np.empty(4096, dtype=np.int64)
    for i, x in enumerate(range(-2048, 2048)):
        xc = min(max(x, -2047), 2047)
        w = xc & 127
        d = (xc >> 7) + 16
        out[i] = (pts[d] * (128 - w) + pts[d + 1] * w + 64) >> 7
    return out


SQUASH = _squash_table()  # index x + 2048, x in [-2048, 2047] -> p in [1, 4095]


def _stretch_table() -> I64:
    """stretch(p) = ln(p / (1 - p)) * 256 for 12-bit p: the inverse of ``SQUASH``."""
    out = np.empty(4096, dtype=np.int64)
    pi = 0
    for x in range(-2047, 2048):
        v = int(SQUASH[x + 2048])
        for j in range(pi, v + 1):
            out[j] = x
        pi = max(pi, v + 1)
    out[pi:] = 2047
    return out


STRETCH = _stretch_table()


def recip_table(offset: int) -> I64:
    """Adaptive counter rate 1/(n + offset/20) in Q16, n = the counter's count: fast while
    a context is young, then slower. offset 30 (1/(n + 1.5)) was the only rate before
    the `counter_offset` and `apm_offset` parameters."""
    return np.array([(20 << 16) // (20 * n + offset) for n in range(1 << N_BITS)], dtype=np.int64)


OLD_RATE_OFFSET = 30  # 1/(n + 1.5): what an archive without the offsets used

MIXER_DECAY = 65536  # the default `mixer_decay` of level 3 (0: archives without it)
# ... and its `counter_offset` and `mixer_init` since l3-2026-12g (23 and 8000 before,
# and still at levels 1 and 2): whole corpus files, cm alone, 525,536 -> 524,408 bytes
COUNTER_OFFSET = 22
MIXER_INIT = 4000  # (6000 from l3-2026-12g to l3-2026-12k; see PRESETS["l3-2026-12l"])
# ... and the rate of its extra weight sets since l3-2026-12h, in sixteenths of the rate
# of sets A and B (16, the same rate, before and at levels 1 and 2): whole corpus files,
# cm alone, with apm_miss, 522,830 -> 520,350 bytes together (see apm_miss)
MIXER_EXTRA_RATE = 10
#: The final probability's clip, [FINAL_MIN, 65535 - FINAL_MIN] in 65536ths (4 until
#: l3-2026-12o: the bound of the first APM average, which the later averages kept).
FINAL_MIN = 1


def miss_state(misses: I64) -> I64:
    """apm_miss's state (0..15) from miss histories: the last two bits, whether any of the
    six before them, whether any of the eight before those."""
    return (misses & 3) | ((misses & 0xFC) != 0) << 2 | ((misses & 0xFF00) != 0) << 3


def mixer_rate(decay: int, pos: int) -> int:
    """The mixer's learning rate at byte position ``pos``, in 16ths of 2**-mixer_shift:
    16 * decay / (decay + pos), at least 8 (16 throughout when ``decay`` is 0)."""
    return max(8, 16 * decay // (decay + pos)) if decay else 16

# Match length -> bucket (0 = no match), roughly logarithmic beyond 16.
_MLB = np.minimum(np.arange(64), 15)
_MLB[16:] = 16 + (np.arange(16, 64) - 16) // 16
MATCH_BUCKET = np.concatenate([_MLB, [19]]).astype(np.int64)  # 20 buckets
N_MATCH_BUCKETS = 20

# Which bytes continue a word: digits and letters (ASCII), and bytes >= 128 (UTF-8).
_WORD = np.zeros(256, dtype=bool)
for _c in range(256):
    _WORD[_c] = chr(_c).isalnum() if _c < 128 else True
WORD_BYTE = _WORD

# Byte classes of the "shape" context: digit 0, upper 1, lower 2, space 3, newline 4,
# other printable ASCII 5, control 6, >= 128 7 (the C kernel builds the same table).
BYTE_CLASS = np.array(
    [0 if chr(c).isdigit() and c < 128 else 1 if 65 <= c <= 90 else 2 if 97 <= c <= 122
     else 3 if c == 32 else 4 if c == 10 else 5 if 32 < c < 127 else 6 if c < 128 else 7
     for c in range(256)], dtype=np.int64,
)  # fmt: skip
_SHIFTS8 = np.arange(0, 64, 8, dtype=np.uint64)  # byte m of h8 (m = 0 newest)


def _shape(h8: U64, k: int) -> U64:
    """The classes of the last k bytes, 3 bits each, the newest in the highest bits."""
    cls = BYTE_CLASS[((h8[:, None] >> _SHIFTS8[:k]) & _u64(0xFF)).astype(np.int64)]
    shifts = np.arange(3 * (k - 1), -1, -3, dtype=np.uint64)
    return (cls.astype(np.uint64) << shifts).sum(axis=1, dtype=np.uint64)


APM_POINTS = 24  # interpolation points per APM context (stretch domain, as lpaq1)
IND2_SIZE = 1 << 16  # the indirect table: one entry per pair of bytes
# align: a repeat that held ALIGN_MIN bytes is worth waiting for (at the byte it expected
# when it broke) for ALIGN_WAIT missed bytes. On the whole corpus files, cm alone: wait
# 16: 531,968 bytes, 32: 529,128, 64: 529,282; run 2: 528,968, 8: 529,170.
ALIGN_MIN = 4
ALIGN_WAIT = 32
APM3_SIZE = 1 << 16  # apm_match's contexts (a 16-bit hash)
APM4_SIZE = 1 << 12  # apm_miss's contexts (partial byte, miss state)
IND4_BITS = 18  # ind4's table: the last two bytes that followed each last-four-bytes hash
#: The field table (tmplabove): a line's template up to a field's start -> where that
#: field started last time, as (position + 1) << 16 | row (0: never).
FTAB_BITS = 18
#: The token table (tokabove): the same for tokens, which start after every byte that is
#: not an ASCII letter or digit (values in key=value pairs, paths, bracketed fields).
TTAB_BITS = 18
#: The key table (keyvalue): the same for tokens keyed by the word before the byte that
#: opens them and that byte (a key and its "=", ":" or " "), whatever the template.
KTAB_BITS = 18
#: tmplnext's two tables: by the line's template up to a field's start, the hash of the
#: value that field had last time (0: never); and by that key with that value, where the
#: field that followed it began (as the field table). Sequences of values a log statement
#: prints again (line numbers, module names, test names in a rerun) come back in order.
NTAB_BITS = 18
#: tmplnext2: the same by the field's last two values (a value table of the value before
#: the last, beside tmplnext's, and a successor table of its own, NTAB_BITS each); per
#: stream its successor entry, the byte that predicts, how the field compares so far
N2_FS, N2_B, N2_CMP, NEXT2_COLS = range(4)
#: headabove: a line's head is the template of its first HEAD_BYTES bytes (all of it when
#: shorter): long enough to get past a log prefix such as maven's "[INFO] --- " with its
#: colour codes to the plugin's name, short enough to stop before a module's.
HEAD_BYTES = 52
ALNUM = np.zeros(256, dtype=bool)
ALNUM[list(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")] = True
# The text state of wordgap, blockword, charmask, gapwords and keyword (_text_step),
# TEXT_COLS words per stream: the case-folded word so far (0 between words), the two words
# before it, the gap before it and the one before that, the last four bytes as classes,
# the last word before a ':' or '=' (paq8px's keyword0). Words are runs of WORD_BYTE
# (paq8px's word model folds case and counts digits in words too).
T_W0, T_W1, T_W2, T_G0, T_G1, T_MASK, T_KEY, TEXT_COLS = range(8)
TEXT_CONTEXTS = ("wordgap", "blockword", "charmask", "gapwords")
FOLD = np.arange(256, dtype=np.uint64)  # A-Z to a-z
FOLD[65:91] += np.uint64(32)
GAP_BYTE = FOLD.copy()  # what a gap byte adds: a newline counts as a space
GAP_BYTE[10] = 32
# charmask's class of a byte: a digit, a vowel, another letter, or the byte itself
CHAR_CLASS = FOLD.copy()
CHAR_CLASS[WORD_BYTE] = ord("b")
CHAR_CLASS[list(b"0123456789")] = ord("0")
CHAR_CLASS[list(b"aeiouAEIOU")] = ord("a")
EXT_WEIGHT_INIT = 16384  # the external input's initial weight (Q16: 1/4)


#: How a field or token compares so far with the bytes a context predicted for it.
CMP_EQUAL, CMP_GREATER, CMP_LESS, CMP_NONE = 0, 1, 2, 3


def _compare_step(state: I64, byte: I64, predicted: I64, separator: np.ndarray) -> I64:
    """The comparison state after ``byte``, which ``predicted`` (256: none) was expected
    to be: CMP_EQUAL until a byte differs, then whether that byte was greater or less (or
    had no prediction) until the next separator, which starts the next field or token
    equal. (Timestamps, counters and ids: while a value equals the last one, its next
    digit likely does too; after a greater digit, the rest is anyone's.)"""
    first = (state == CMP_EQUAL) & (byte != predicted)
    diff = np.where(
        predicted == 256, CMP_NONE, np.where(byte > predicted, CMP_GREATER, CMP_LESS)
    )
    return np.where(separator, CMP_EQUAL, np.where(first, diff, state))


def _write_highest_row(table: I64, keys: I64, vals: I64) -> None:
    """table[keys] = vals where, for a key several streams share, the highest row's value
    stays (as the C kernel writing in row order)."""
    last = len(keys) - 1 - np.unique(keys[::-1], return_index=True)[1]
    table[keys[last]] = vals[last]


def _apm_pair(table: I64, first: I64, wt: I64) -> tuple[I64, I64, I64, I64]:
    """apm_match's and apm_miss's tables: the two points from ``first`` around the mixer's
    stretch value (indices, values, clipped probabilities: update needs them) and their
    interpolation by ``wt`` (in 4096ths)."""
    idx = first[:, None] + np.arange(2)
    val = table[idx]
    p = np.clip(val >> N_BITS, 0, P_MAX)
    return idx, val, p, p[:, 0] * (4096 - wt) + p[:, 1] * wt


def _ind4_key(h8: U64) -> I64:
    """ind4's table entry for the last four bytes of each h8."""
    h = ((h8 & _u64(0xFFFFFFFF)) + _u64(1)) * _u64(_H2)
    return (h >> _u64(64 - IND4_BITS)).astype(np.int64)


def _u64(x: npt.ArrayLike) -> U64:
    return np.asarray(x, dtype=np.uint64)


class ContextMixPredictor(Predictor):
    """Bitwise context-mixing predictor; see the module docstring for the model."""

    name = "cm"
    n_symbols = 2
    freq_bits = 16

    def __init__(
        self,
        *,
        level: int | str | None = None,
        contexts: tuple[str, ...] | list[str] | None = None,
        table_bits: int = 20,
        history_bits: int = 22,
        match_hash_bits: int = 20,
        match_min: int = 6,
        counter_limit: int = 255,
        mixer_shift: int = 13,
        mixer_init: int | None = None,
        apm_limit: int = 127,
        mixer_contexts: tuple[str, ...] | list[str] | None = None,
        external_input: bool = False,
        slot_check: bool = True,
        counter_offset: int | None = None,
        apm_offset: int = 400,
        carry_history: bool = True,
        mixer_decay: int | None = None,
        apm_match: bool | None = None,
        apm_miss: bool | None = None,
        mixer_extra_rate: int | None = None,
        final_min: int | None = None,
        compiled: bool | None = None,
    ) -> None:
        if isinstance(level, str):  # "cm:2" on a command line
            level = int(level) if level.strip().isdigit() else -1
        if contexts is None:
            lvl = DEFAULT_LEVEL if level is None else level
            if lvl not in LEVELS:
                raise ValueError(f"level must be one of {sorted(LEVELS)}, got {lvl}")
            contexts = LEVELS[lvl]
        elif level is not None:
            raise ValueError("give either level or contexts, not both")
        contexts = tuple(contexts)
        # levels 1 and 2 learn best at a constant rate (below), and keep the counter rate
        # and first weights they had before level 3 retuned them (PRESETS["l3-2026-12g"])
        low_level = contexts in (LEVELS[1], LEVELS[2])
        self.low_level = low_level
        if mixer_decay is None:
            mixer_decay = 0 if low_level else MIXER_DECAY
        if counter_offset is None:
            counter_offset = 23 if low_level else COUNTER_OFFSET
        if mixer_init is None:
            mixer_init = 8000 if low_level else MIXER_INIT
        if apm_match is None:
            apm_match = not low_level
        if apm_miss is None:
            apm_miss = not low_level
        if mixer_extra_rate is None:
            mixer_extra_rate = 16 if low_level else MIXER_EXTRA_RATE
        if final_min is None:
            final_min = 4 if low_level else FINAL_MIN
        if mixer_contexts is None:
            with_tabove = "tmplabove" in tuple(contexts)
            sel = TEMPLATE_MIXER_SELECTORS if with_tabove else DEFAULT_MIXER_SELECTORS
        else:
            sel = tuple(mixer_contexts)
        if any(m not in MIXER_SELECTORS for m in sel) or len(set(sel)) != len(sel):
            raise ValueError(
                f"mixer_contexts must be distinct names from {tuple(MIXER_SELECTORS)}, got {sel}"
            )
        bad = [c for c in contexts if c not in CONTEXT_NAMES]
        if bad or len(set(contexts)) != len(contexts) or not contexts:
            raise ValueError(
                f"contexts must be distinct names from {CONTEXT_NAMES}, got {contexts}"
            )
        for nm, val, lo, hi in (
            ("table_bits", table_bits, MIN_TABLE_BITS, MAX_TABLE_BITS),
            ("history_bits", history_bits, 12, MAX_TABLE_BITS),
            ("match_hash_bits", match_hash_bits, 8, 22),
            ("match_min", match_min, 2, 8),
            ("counter_limit", counter_limit, 1, (1 << N_BITS) - 128),
            ("mixer_shift", mixer_shift, 4, 24),
            ("mixer_init", mixer_init, 0, 1 << 17),
            ("apm_limit", apm_limit, 1, (1 << N_BITS) - 128),
            ("counter_offset", counter_offset, 21, 4000),
            ("apm_offset", apm_offset, 21, 4000),
            ("mixer_decay", mixer_decay, 0, 1 << 30),
            ("mixer_extra_rate", mixer_extra_rate, 1, 16),
            ("final_min", final_min, 1, 4),
        ):
            if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
                raise ValueError(f"{nm} must be an integer in [{lo}, {hi}], got {val!r}")
        # compiled: run predict/update in the C kernel (None: when it was built and
        # TINYZIP_PURE_NUMPY is not 1). Not part of the descriptor: results are identical.
        if compiled is None:
            compiled = os.environ.get("TINYZIP_PURE_NUMPY") != "1"
        if compiled and _cm_kernel is None:
            compiled = False
        self.compiled = bool(compiled)
        # Keep the canonical context order so descriptors compare equal.
        self.contexts = tuple(c for c in CONTEXT_NAMES if c in contexts)
        self._uses_ind2 = "ind2" in self.contexts  # only then is the indirect table kept up
        self._uses_ind1 = "ind1" in self.contexts
        self._uses_ind4 = "ind4" in self.contexts
        self._uses_align = "align" in self.contexts
        self.mixer_contexts = tuple(m for m in MIXER_SELECTORS if m in sel)
        # ... and the field table (for the tmplabove context or the tabove selector)
        self._uses_ftab = bool({"tmplabove", "tmplcmp"} & set(self.contexts)) or (
            "tabove" in self.mixer_contexts
        )
        # the token table (and the token starts, which keyvalue needs too)
        self._uses_ttab = bool({"tokabove", "tokcmp", "keyvalue", "tokrun"} & set(self.contexts))
        self._uses_tabcmp = "tmplcmp" in self.contexts  # ... the comparison states
        self._uses_tokcmp = bool({"tokcmp", "tokrun"} & set(self.contexts))
        self._uses_tokrun = "tokrun" in self.contexts
        self._uses_ktab = "keyvalue" in self.contexts  # ... and the key table
        # ... and tmplnext's tables (tmplnext2 reads the value table too)
        self._uses_ntab = bool({"tmplnext", "tmplnext2"} & set(self.contexts))
        self._uses_ntab2 = "tmplnext2" in self.contexts  # ... and tmplnext2's own
        self._uses_lhead = "headabove" in self.contexts  # ... the line heads
        self._uses_blank = "blankpos" in self.contexts  # ... whether a line is blank so far
        # ... the text state
        self._uses_text = bool({*TEXT_CONTEXTS, "keyword", "wordskip"} & set(self.contexts))
        if not isinstance(external_input, bool):
            raise ValueError(f"external_input must be true or false, got {external_input!r}")
        # external_input: one more mixer input, P(next bit) from a 256-entry table per
        # byte that the caller supplies (set_external): the transformer's distribution.
        self.external_input = external_input
        if not isinstance(slot_check, bool):
            raise ValueError(f"slot_check must be true or false, got {slot_check!r}")
        # slot_check: a hashed context's slot keeps a 16-bit check of the context that owns
        # it, in 4-way sets, so colliding contexts replace each other instead of sharing
        # counters (_checked_slots). Archives made before it have none.
        self.slot_check = slot_check
        if not isinstance(carry_history, bool):
            raise ValueError(f"carry_history must be true or false, got {carry_history!r}")
        # carry_history: the streams of a frame continue the histories (last bytes, line,
        # match model) of the previous frame's streams when their number is the same
        # (begin). Archives made before it start every frame's streams empty, which cost
        # 3.1% on a 1.9 MB CI log cut into 512 KiB frames.
        self.carry_history = carry_history
        # apm_match (since l3-2026-12g): a third APM, by the byte the match model predicts
        # (while it agrees with the bits so far), its length bucket and the partial byte
        # (a 16-bit hash); the final probability is (mixer + APM1 + 2 APM2 + 2 APM3) / 6.
        # Whole corpus files, cm alone: 524,408 -> 522,830 bytes (-0.3%; by the partial
        # byte and the match state alone -0.2%, by the last two bytes or the align
        # pointer's byte less).
        self.apm_match = bool(apm_match)
        # apm_miss (since l3-2026-12h): a fourth APM, by the partial byte and which of the
        # last bits the final probability got wrong (the last two; any of the six before;
        # any of the eight before those: paq8px keeps such an APM), weighted 4 in
        # (mixer + APM1 + 2 APM2 + 2 APM3 + 4 APM4) / 10. It needs apm_match.
        if not isinstance(apm_miss, bool) or (apm_miss and not apm_match):
            raise ValueError(f"apm_miss must be true or false, and needs apm_match: {apm_miss!r}")
        self.apm_miss = apm_miss
        # The extra weight sets (mixer_contexts) learn at mixer_extra_rate sixteenths of
        # the rate of sets A and B.
        self.mixer_extra_rate = mixer_extra_rate
        # the final probability lies in [final_min, 65535 - final_min] (with apm_match)
        self.final_min = final_min
        # Counters move toward each bit by 1/(n + offset/20): the context and match
        # counters by counter_offset, the APM points by apm_offset. The first 256 KiB of
        # every corpus file (cm alone, with slot_check, ind2, matchbyte), payload bytes by
        # counter/APM offset: 30/30 (the rate before these parameters) 440,986; 25/25
        # 438,166; 22/22 438,328; 40/40 447,916; 25/30 436,802; 25/40 435,232; 25/60
        # 433,750; 25/100 432,602; 24/200 431,040; 22/200 430,324; 24/400 430,814;
        # 23/400 430,174; 21/400 431,768; 22/800 430,188. (Then mixer_shift 12 456,164,
        # 14 432,888: it stays 13; counter_limit 127/600 and apm_limit 255 within 0.03%.)
        self.counter_offset = counter_offset
        self.apm_offset = apm_offset
        self._recip = recip_table(counter_offset)
        self._recip_apm = recip_table(apm_offset)
        self.table_bits = table_bits
        self.history_bits = history_bits
        self.match_hash_bits = match_hash_bits
        self.match_min = match_min
        self.counter_limit = counter_limit
        self.mixer_shift = mixer_shift
        self.mixer_init = mixer_init
        self.apm_limit = apm_limit
        # mixer_decay: the mixer's learning rate at byte position pos (counted on across
        # frames, like every position) is max(1/2, C / (C + pos)) times 2**-mixer_shift,
        # C = mixer_decay (0: constant): fast while the weights are far off, steadier
        # once they fit. 65536 on the first 256 KiB of every corpus file (cm alone):
        # 410,546 -> 408,254 bytes (-0.6%); whole files 536,114 -> 531,910 (-0.8%);
        # C 16384/32768/131072/262144: 408,426/408,296/408,394/408,718; a floor of 3/8
        # instead of 1/2: 408,538 (whole files 532,502), 5/8: 408,288. (A rate per
        # weight set from its own update count did no better: 407,986 at C = 16384
        # updates, 408,470 at 65536, for a count per set and 25% more time; a constant
        # rate of 2**-14: 409,384, of 2**-15: 415,832.) Level 1, with its four contexts
        # and two weight sets, does worse with it (508,560 -> 517,444), so levels 1 and
        # 2 keep the constant rate by default.
        self.mixer_decay = mixer_decay

        # One flat int64 table holds every shared, learned number, so that one gather
        # per group and ONE np.add.at per bit update them all (numpy calls per bit are
        # what costs time). Layout, in order:
        #   context counters: o0 and o1 direct-indexed (17 slots of 16 counters per byte
        #     context: one slot for the high nibble, 16 for the low nibble after each
        #     high nibble); other contexts hashed into 2**table_bits counters each;
        #   match counters: (length bucket, expected bit, bit position);
        #   APM1: 256 partial bytes x 24 points; APM2: 65536 (partial byte, last byte) x 24;
        #   mixer weights: 1024 weight sets (partial byte x match bucket) x inputs, then
        #     2048 (last byte x bit position), then those of each mixer_contexts entry.
        offs: list[int] = []
        pos = 0
        for c in self.contexts:
            offs.append(pos)
            pos += {"o0": 17 * 16, "o1": 256 * 17 * 16}.get(c, 1 << table_bits)
        self._match_off = pos
        pos += N_MATCH_BUCKETS * 2 * 16
        self._apm1_off = pos
        pos += 256 * APM_POINTS
        self._apm2_off = pos
        pos += (1 << 16) * APM_POINTS
        self._w_off = pos
        self._n_ctx = len(self.contexts)
        # Mixer inputs of every weight set: one per context, the match model, a bias. (The
        # external input has weights of its own, after the sets: see _ext_w_off.)
        self._n_inputs = self._n_ctx + 2
        # Two weight sets are selected per bit and their dot products add up (a mixer
        # whose weights are shared along two contexts): set A by the partial byte and
        # the match bucket (1024 sets), set B by the last byte and the bit position
        # (2048 sets, at _w2_off).
        ni = self._n_inputs
        self._w2_off = pos + 256 * 4 * ni
        pos += (256 * 4 + 256 * 8) * ni
        # The extra sets: one block of (values x 8 bit positions) sets per selector.
        self._n_sets = 2 + len(self.mixer_contexts)
        self._wx_off = pos
        sel_off = []
        for m in self.mixer_contexts:
            sel_off.append(pos)
            pos += MIXER_SELECTORS[m] * 8 * ni
        self._sel_off = np.array(sel_off, dtype=np.int64)
        # The external input's weight, one per partial byte: it is not in the weight sets
        # above, where thousands of copies would each have to learn to trust it.
        self._n_ext = int(external_input)
        self._ext_w_off = pos
        pos += 256 * self._n_ext
        self._sel_kinds = np.array(
            [list(MIXER_SELECTORS).index(m) for m in self.mixer_contexts], dtype=np.int64
        )
        self._table_size = pos
        if pos > MAX_TOTAL_ENTRIES:
            raise ValueError(
                f"tables would need {pos} entries, more than {MAX_TOTAL_ENTRIES}: "
                "lower table_bits or use fewer contexts"
            )
        self._ctx_off = np.array(offs, dtype=np.int64)
        direct = np.array([c in ("o0", "o1") for c in self.contexts])
        self._hashed_cols = np.flatnonzero(~direct)
        orders = {"o0": 0, "o1": 1, "o2": 2, "o3": 3, "o4": 4, "o5": 5, "o6": 6}
        self._n_orders = sum(1 for c in self.contexts if c in orders)
        self._order_masks = np.array(
            [(1 << (8 * orders[c])) - 1 for c in self.contexts if c in orders], dtype=np.uint64
        )
        self._log_cols = [(j, c) for j, c in enumerate(self.contexts) if c not in orders]
        self._direct_cols = np.flatnonzero(direct)
        # Columns of the per-step index/value/delta buffers:
        #   [0, nc) contexts, nc match, [nc+1, nc+5) APM points, [nc+5, nc+5+S*ni) weights
        #   of set A, set B, then the extra sets.
        nc = self._n_ctx
        self._c_apm = nc + 1
        self._c_w = nc + 5
        self._n_cols = nc + 5 + self._n_sets * self._n_inputs + self._n_ext
        self._lim = np.array([counter_limit] * (nc + 1) + [apm_limit] * 4, dtype=np.int64)
        self._w_cols = np.arange(self._n_inputs, dtype=np.int64)
        # APM interpolation weights as affine maps of wt, with APM2 counted twice in the
        # final average: p = (mixer + APM1 + 2 * APM2) / 4.
        self._apm_wmul = np.array([-1, 1, -2, 2], dtype=np.int64)
        self._apm_wadd = np.array([4096, 0, 8192, 0], dtype=np.int64)
        self.reset()

    # ----------------------------------------------------------------- descriptor

    def descriptor(self) -> dict[str, Any]:
        """What an archive header records: a preset's name when the parameters are one
        (a few dozen bytes instead of ~370: it matters for small files), else them all."""
        full = self.full_descriptor()
        for name, params in PRESETS.items():
            if params == full["params"]:
                return {"name": self.name, "version": VERSION, "preset": name}
        return full

    def full_descriptor(self) -> dict[str, Any]:
        """Every parameter spelled out (the form of archives made before presets)."""
        desc: dict[str, Any] = {
            "name": self.name,
            "version": VERSION,
            "params": {
                "contexts": list(self.contexts),
                "table_bits": self.table_bits,
                "history_bits": self.history_bits,
                "match_hash_bits": self.match_hash_bits,
                "match_min": self.match_min,
                "counter_limit": self.counter_limit,
                "mixer_shift": self.mixer_shift,
                "mixer_init": self.mixer_init,
                "apm_limit": self.apm_limit,
            },
        }
        # Archives made before the extra weight sets have no such entry (= none).
        if self.mixer_contexts:
            desc["params"]["mixer_contexts"] = list(self.mixer_contexts)
        if self.external_input:
            desc["params"]["external_input"] = True
        if self.slot_check:
            desc["params"]["slot_check"] = True
        for name in ("counter_offset", "apm_offset"):
            if getattr(self, name) != OLD_RATE_OFFSET:
                desc["params"][name] = getattr(self, name)
        if self.carry_history:
            desc["params"]["carry_history"] = True
        if self.mixer_decay:
            desc["params"]["mixer_decay"] = self.mixer_decay
        if self.apm_match:
            desc["params"]["apm_match"] = True
        if self.apm_miss:
            desc["params"]["apm_miss"] = True
        if self.mixer_extra_rate != 16:
            desc["params"]["mixer_extra_rate"] = self.mixer_extra_rate
        if self.final_min != 4:
            desc["params"]["final_min"] = self.final_min
        return desc

    #: Compiled, a frame runs in C at the same speed whatever B is, and one stream
    #: compresses best (loghub: 0.426 bpb at B = 1, 0.474 at B = 32). The same on every
    #: machine, so that an input gives the same archive everywhere, although the numpy
    #: reference alone (no compiler at install) codes one stream at about 1 KB/s.
    default_streams = 1

    # ------------------------------------------------------------------ symbols

    def to_symbols(self, raw: bytes) -> np.ndarray:
        # uint8: a 512 KiB frame is 4 Mi bits, 32 MiB as int64 (it set the peak memory).
        return np.unpackbits(np.frombuffer(raw, dtype=np.uint8))

    def from_symbols(self, symbols: np.ndarray) -> bytes:
        bits = np.asarray(symbols)
        if bits.size % 8:
            raise CorruptInputError(f"bit count {bits.size} is not a whole number of bytes")
        return np.packbits(bits.astype(np.uint8)).tobytes()

    # -------------------------------------------------------------------- state

    def reset(self) -> None:
        for name, (size, runs) in self._fresh_layout().items():
            table = getattr(self, name, None)
            if name == "_t" and table is not None and table.size == size:
                pass  # refill in place: a fresh array beside the old one would double peak memory
            elif all(p.size == 1 and p[0] == 0 for _, _, p in runs):
                table = np.zeros(size, dtype=np.int64)  # (calloc: pages untouched cost nothing)
            else:
                table = np.empty(size, dtype=np.int64)
            for start, end, pattern in runs:
                table[start:end].reshape(-1, pattern.size)[:] = pattern
            setattr(self, name, table)
        self.begin(0)

    def _fresh_layout(self) -> dict[str, tuple[int, list[tuple[int, int, np.ndarray]]]]:
        """What ``reset`` writes into each shared table: its size, and runs (start, end,
        pattern) that together cover it, each holding its pattern repeated."""

        def const(value: int) -> np.ndarray:
            return np.array([value], dtype=np.int64)

        # APM tables start as the identity map: point j holds squash of its stretch value.
        xs = np.clip(np.arange(APM_POINTS) * 4096 // (APM_POINTS - 1) - 2048, -2047, 2047)
        ident = ((SQUASH[xs + 2048] << (P_BITS - 12)) << N_BITS).astype(np.int64)
        n3 = APM_POINTS * (APM3_SIZE if self.apm_match else 0)  # apm_match's table
        n4 = APM_POINTS * (APM4_SIZE if self.apm_miss else 0)  # apm_miss's, alike
        return {
            "_t": (self._table_size, [
                (0, self._apm1_off, const(P_HALF << N_BITS)),  # counters: p = 1/2, n = 0
                (self._apm1_off, self._apm2_off, ident),
                (self._apm2_off, self._w_off, ident),
                (self._w_off, self._wx_off, const(self.mixer_init // 2)),  # A + B: mixer_init
                (self._wx_off, self._ext_w_off, const(0)),  # the extra sets: no correction
                (self._ext_w_off, self._table_size, const(EXT_WEIGHT_INIT)),
            ]),
            # The indirect tables, shared by the streams and learned like the counters:
            # ind2, the last two bytes that followed each pair of bytes; ind1 the last
            # three that followed each byte; ind4 the last two that followed each last
            # four bytes (by a hash, IND4_BITS).
            "_ind1": (256, [(0, 256, const(0))]),
            "_ind2": (IND2_SIZE, [(0, IND2_SIZE, const(0))]),
            "_ind4": (1 << IND4_BITS, [(0, 1 << IND4_BITS, const(0))]),
            "_apm3": (n3, [(0, n3, ident)]),
            "_apm4": (n4, [(0, n4, ident)]),
        }  # fmt: skip

    def fresh_values(self, name: str, lo: int, hi: int) -> np.ndarray:
        """Entries ``lo``..``hi``-1 of shared table ``name`` as ``reset`` leaves them."""
        out = np.empty(hi - lo, dtype=np.int64)
        for start, end, pattern in self._fresh_layout()[name][1]:
            a, b = max(start, lo), min(end, hi)
            if a < b:  # the pattern from entry a on, repeated
                first = np.roll(pattern, -((a - start) % pattern.size))
                out[a - lo : b - lo] = np.tile(first, -(-(b - a) // first.size))[: b - a]
        return out

    #: The arrays ``reset`` makes: all that a frame passes on to the next one besides the
    #: per-stream histories (which ``begin`` remakes unless it carries them on).
    SHARED_STATE = ("_t", "_ind1", "_ind2", "_ind4", "_apm3", "_apm4")

    def shared_tables(self) -> dict[str, np.ndarray]:
        """The shared tables themselves (changing them changes the predictor)."""
        return {name: getattr(self, name) for name in self.SHARED_STATE}

    def shared_state(self) -> dict[str, np.ndarray]:
        """Copies of the shared tables (see ``load_shared_state``)."""
        return {name: table.copy() for name, table in self.shared_tables().items()}

    def load_shared_state(self, state: dict[str, np.ndarray]) -> None:
        """Overwrite the shared tables, in place, with ``shared_state()``'s copies: after
        ``reset``, the predictor is then the one they were taken from, before its next begin."""
        for name in self.SHARED_STATE:
            np.copyto(getattr(self, name), state[name])

    def cap_counts(self, cap: int) -> None:
        """Every counter (contexts, match, APMs) that has seen more than ``cap`` bits
        counts ``cap``: what came before (a primer) then weighs as ``cap`` bits seen, and
        the data's own bits move it as fast as they would move a young counter."""
        if not 0 <= cap <= N_MASK:
            raise ValueError(f"cap must be in [0, {N_MASK}], got {cap}")
        # (the contexts' slots are 16 entries from a multiple of 16; entry 0 is no counter)
        for table, end, checks_end in (
            (self._t, self._w_off, self._match_off), (self._apm3, None, 0),
            (self._apm4, None, 0),
        ):  # fmt: skip
            end = table.size if end is None else end
            if self.compiled:
                _cm_kernel.cap_counts(table, end, cap, checks_end)
                continue
            for lo in range(0, end, 1 << 22):  # in pieces: temporaries of the whole are GBs
                v = table[lo : min(end, lo + (1 << 22))]
                at = np.arange(lo, lo + v.size)
                cnt = v & N_MASK
                counter = (at >= checks_end) | (at % 16 != 0)
                v -= np.where((cnt > cap) & counter, cnt - cap, 0)

    def relax_mixer(self, keep: int) -> None:
        """Every mixer weight keeps ``keep``/8 of what it learned: sets A and B move back
        toward their initial ``mixer_init // 2``, the extra sets toward 0 (rounding down).
        After a primer of one line of each kind, the mixer trusts what paid on lines never
        seen before; on a log, whose lines repeat, the file's own bits must retrain it."""
        if not 0 <= keep <= 8:
            raise ValueError(f"keep must be in [0, 8], got {keep}")
        w = self._t[self._w_off : self._wx_off]  # (a view: the table changes in place)
        init = self.mixer_init // 2
        w[:] = init + (w - init) * keep // 8
        x = self._t[self._wx_off : self._ext_w_off]
        x[:] = x * keep // 8

    def set_external_weight(self, weight: int) -> None:
        """Set the external input's weights (one per partial byte, Q16) to ``weight``."""
        self._t[self._ext_w_off :] = weight

    def begin(self, n_streams: int) -> None:
        if not isinstance(n_streams, (int, np.integer)) or n_streams < 0:
            raise ValueError(f"n_streams must be an integer >= 0, got {n_streams!r}")
        b = int(n_streams)
        if b > MAX_STREAMS:
            raise ValueError(f"at most {MAX_STREAMS} streams, got {b}")
        # carry_history: a frame of as many streams as the last one continues their
        # histories (stream i after stream i), positions counting on from the last frame's
        # end; otherwise every stream starts empty at position 0.
        carry = self.carry_history and b > 0 and b == getattr(self, "_b", 0)
        self._pos0 = self._pos0 + self._step if carry else 0
        self._b = b
        self._n_prev = b  # active streams of the previous step (they only ever decrease)
        self._bit = 0  # bit position in the byte, common to all streams (lockstep)
        self._step = 0  # byte steps done since begin; the byte's position is _pos0 + _step
        self._c0 = np.ones(b, dtype=np.int64)  # partial byte with a leading 1
        self._c0n = np.ones(b, dtype=np.int64)  # partial nibble with a leading 1
        if not carry:
            self._new_histories(b)
        self._rows = np.arange(b, dtype=np.int64)
        # Per-step buffers (index, value, delta of every table entry touched, mixer inputs).
        self._idx = np.zeros((b, self._n_cols), dtype=np.int64)
        self._val = np.zeros((b, self._n_cols), dtype=np.int64)
        self._dlt = np.zeros((b, self._n_cols), dtype=np.int64)
        self._pcl = np.zeros((b, self._c_w), dtype=np.int64)
        # Mixer inputs, one copy per weight set (last column of each: the bias).
        self._x = np.full((b, self._n_sets * self._n_inputs + self._n_ext), 256, dtype=np.int64)
        self._wbase = np.zeros((b, self._n_sets), dtype=np.int64)
        self._blk = np.zeros((b, self._n_ctx), dtype=np.int64)
        self._abase = np.zeros((b, 4), dtype=np.int64)
        self._abase[:, 0] = self._apm1_off
        self._abase[:, 1] = self._apm1_off + 1
        self._ctx_vals = np.zeros((b, self._n_ctx), dtype=np.uint64)
        self._predicted = -1
        self._p12 = np.zeros(b, dtype=np.int64)  # the mixer's output, kept for update
        # External input: cumulative tables (B, K, 257) of bytes _ext_first.. (none yet).
        self._ext = np.zeros((max(b, 1), 0, 256), dtype=np.int64)
        self._ext_first = 0
        self._byte_contexts(b)
        self._kernel = self._bind_kernel() if self.compiled else None

    def _new_histories(self, b: int) -> None:
        """Empty per-stream histories for b streams (what begin resets)."""
        self._h8 = np.zeros(b, dtype=np.uint64)  # last 8 bytes, newest lowest
        self._wordh = np.zeros(b, dtype=np.uint64)
        self._pword = np.zeros(b, dtype=np.uint64)  # hash of the previous word
        self._col = np.zeros(b, dtype=np.int64)
        self._field = np.zeros(b, dtype=np.int64)
        self._line = np.zeros(b, dtype=np.int64)  # position where the current line starts
        self._pline = np.zeros(b, dtype=np.int64)  # ... and the previous line
        self._above = np.full(b, 256, dtype=np.int64)  # 256: no byte above
        self._tmpl = np.zeros(b, dtype=np.uint64)  # hash of the line's template so far
        self._ptmpl = np.zeros(b, dtype=np.uint64)  # ... and of the previous line's
        # Where each field starts, as a column: in the current line, and in the previous
        # one (-1: the line had no such field).
        self._cfields = np.full((b, MAX_FIELD + 1), -1, dtype=np.int64)
        self._cfields[:, 0] = 0
        self._pfields = np.full((b, MAX_FIELD + 1), -1, dtype=np.int64)
        # tmplabove: the field table (shared, like the match table) and, per stream, its
        # entry for the current field (where the same template's field began last time)
        self._ftab = np.zeros(1 << FTAB_BITS, dtype=np.int64)
        self._tfs = np.zeros(b, dtype=np.int64)
        self._tab = np.full(b, 256, dtype=np.int64)  # the byte it predicts (256: none)
        # tokabove: the token table, and per stream the column where the current token
        # starts and its entry (where a token began after the same template last time)
        self._ttab = np.zeros(1 << TTAB_BITS, dtype=np.int64)
        self._tks = np.zeros(b, dtype=np.int64)
        self._tkc = np.zeros(b, dtype=np.int64)
        self._tob = np.full(b, 256, dtype=np.int64)  # the byte tokabove predicts (256: none)
        # tmplcmp / tokcmp: how the current field and token compare so far with the bytes
        # tmplabove and tokabove predicted for them (CMP_EQUAL ... CMP_NONE)
        self._tabcmp = np.zeros(b, dtype=np.int64)
        self._tokcmp = np.zeros(b, dtype=np.int64)
        # tokrun: the byte that opened the current token (10 at a line start), and how
        # many tokens in a row ended unequal to theirs above (saturating at 3)
        self._toksep = np.full(b, 10, dtype=np.int64)
        self._tokdiffs = np.zeros(b, dtype=np.int64)
        # keyvalue: the key table (the same for the word before a token's opening byte
        # and that byte), and per stream its entry, the byte it predicts, the comparison
        self._ktab = np.zeros(1 << KTAB_BITS, dtype=np.int64)
        self._kvc = np.zeros(b, dtype=np.int64)
        self._kvb = np.full(b, 256, dtype=np.int64)
        self._kvcmp = np.zeros(b, dtype=np.int64)
        # tmplnext: the value table and the successor table (shared, NTAB_BITS), and per
        # stream the current field's value so far (hash), its value-table key (-1: none),
        # its successor entry, the byte that predicts, and how the field compares so far
        self._vtab = np.zeros(1 << NTAB_BITS, dtype=np.uint64)
        self._ntab = np.zeros(1 << NTAB_BITS, dtype=np.int64)
        self._nval = np.zeros(b, dtype=np.uint64)
        self._nkey = np.full(b, -1, dtype=np.int64)
        self._nfs = np.zeros(b, dtype=np.int64)
        self._nb = np.full(b, 256, dtype=np.int64)
        self._ncmp = np.zeros(b, dtype=np.int64)
        self._text = np.zeros((b, TEXT_COLS), dtype=np.uint64)  # see TEXT_COLS
        # tmplnext2: the value before the last by the same key (beside the value table),
        # the successor table by the key and both values, and per stream (NEXT2_COLS) its
        # entry, the byte it predicts, how the field compares so far
        self._vtab2 = np.zeros(1 << NTAB_BITS, dtype=np.uint64)
        self._ntab2 = np.zeros(1 << NTAB_BITS, dtype=np.int64)
        self._next2 = np.zeros((b, NEXT2_COLS), dtype=np.int64)
        self._next2[:, N2_B] = 256
        # headabove: per stream the template of this line's head and of the line above's
        self._lhead = np.zeros((b, 2), dtype=np.uint64)
        # blankpos: per stream whether this line is blank so far (a stream starts a line)
        self._blank = np.ones(b, dtype=np.int64)
        # Match model. Each stream owns a ring of the history buffer; the hash table of
        # the last match_min bytes is shared, so a stream can continue another's repeat.
        self._ring_bits = max(self.history_bits - max(0, (max(b, 1) - 1).bit_length()), 10)
        self._ring = 1 << self._ring_bits
        self._hist = np.zeros(max(b, 1) << self._ring_bits, dtype=np.uint8)
        self._mtab = np.zeros(1 << self.match_hash_bits, dtype=np.int64)  # (pos+1)<<16|row
        self._mlen = np.zeros(b, dtype=np.int64)
        self._mptr = np.zeros(b, dtype=np.int64)  # flat index into _hist of the predicted byte
        self._mok = np.zeros(b, dtype=bool)  # a match predicts, and agrees with the bits so far
        # The align pointer (_align_step): per stream its position in _hist (-1: none), its
        # run, how many bytes it has waited, and the anchor it waits at.
        self._align = np.zeros((b, 4), dtype=np.int64)
        self._align[:, 0] = -1
        # apm_miss: which of the last 16 bits the final probability got wrong (newest lowest)
        self._misses = np.zeros(b, dtype=np.int64)

    def _bind_kernel(self) -> Any:
        """The C kernel, bound to this frame's arrays (begin and reset make new ones)."""
        arrays = (
            self._t, self._c0, self._c0n, self._h8, self._wordh, self._pword, self._col,
            self._field, self._line, self._pline, self._above, self._hist, self._mtab,
            self._mlen, self._mptr, self._mok, self._idx, self._val, self._pcl, self._x,
            self._wbase, self._blk, self._abase, self._ctx_vals, self._ebit, self._midx,
            self._wsel, self._wsel2, self._p12,
            STRETCH, SQUASH, self._recip, MATCH_BUCKET, WORD_BYTE, self._lim, self._ctx_off,
            # the kernel's context kinds are positions in CONTEXT_NAMES
            np.array([CONTEXT_NAMES.index(c) for c in self.contexts], dtype=np.int64),
            self._sel_off, self._sel_kinds, self._tmpl, self._ind2, self._recip_apm,
            self._ptmpl, self._cfields, self._pfields, self._ftab, self._tfs, self._tab,
            self._ttab, self._tks, self._tkc, self._tob, self._tabcmp, self._tokcmp,
            self._toksep, self._tokdiffs, self._ktab, self._kvc, self._kvb, self._kvcmp,
            self._ind1, self._ind4, self._align, self._apm3, self._apm4, self._misses,
            self._vtab, self._ntab, self._nval, self._nkey, self._nfs, self._nb, self._ncmp,
            self._text, self._vtab2, self._ntab2, self._next2, self._lhead, self._blank,
        )  # fmt: skip
        params = (
            self._b, self._n_ctx, self._n_inputs, self._n_cols, self._c_apm, self._c_w,
            self._match_off, self._w_off, self.table_bits, self.mixer_shift,
            self._ring_bits, self.match_min, self.match_hash_bits, self._table_size,
            self._n_sets, self._n_ext, self._ext_w_off, int(self.slot_check), self._pos0,
            self.mixer_decay, int(self.apm_match), int(self.apm_miss), self.mixer_extra_rate,
            self.final_min,
        )  # fmt: skip
        return _cm_kernel.Kernel(arrays, params)

    def state_digest(self) -> str:
        """SHA-256 (hex) of every shared learned number: what golden tests pin."""
        digest = hashlib.sha256(self._t.astype("<i8").tobytes())
        if self._uses_ind2:  # (without the context the table stays zero, and is not hashed)
            digest.update(self._ind2.astype("<i8").tobytes())
        if self._uses_ind1:
            digest.update(self._ind1.astype("<i8").tobytes())
        if self._uses_ind4:
            digest.update(self._ind4.astype("<i8").tobytes())
        if self.apm_match:
            digest.update(self._apm3.astype("<i8").tobytes())
        if self.apm_miss:
            digest.update(self._apm4.astype("<i8").tobytes())
        return digest.hexdigest()

    # ------------------------------------------------------------ per-byte work

    def _byte_contexts(self, n: int) -> None:
        """Context values of the byte about to be coded (streams 0..n-1), and their slots."""
        h8 = self._h8[:n]
        c1 = h8 & _u64(0xFF)
        mok = self._mok[:n]
        mbyte = self._hist[self._mptr[:n]].astype(np.int64)
        # Order-k contexts: the last k bytes, all at once.
        # (They come first: CONTEXT_NAMES lists them first and contexts keep its order.)
        np.bitwise_and(h8[:, None], self._order_masks, out=self._ctx_vals[:n, : self._n_orders])
        if self._uses_ftab:  # tmplabove's bytes (the context and the tabove selector)
            tab = self._template_above(n)
            self._tab[:n] = tab[0].astype(np.int64)
        if self._uses_ttab:  # tokabove's bytes (tokabove, tokcmp, tokrun)
            tok = self._token_above(n)
            self._tob[:n] = tok[0].astype(np.int64)
        if self._uses_ktab:  # keyvalue's: where the same key's value began last time
            kv = self._entry_bytes(n, self._kvc[:n], self._col[:n] - self._tks[:n])
            self._kvb[:n] = kv[0].astype(np.int64)
        if self._uses_ntab:  # tmplnext's byte: in the field that followed this value last time
            self._nb[:n] = self._entry_bytes(n, self._nfs[:n], self._field_offset(n))[0]
        if self._uses_ntab2:  # ... and tmplnext2's, after the last two values
            n2 = self._next2[:n]
            n2[:, N2_B] = self._entry_bytes(n, n2[:, N2_FS], self._field_offset(n))[0]
        tx = self._text[:n]
        for j, c in self._log_cols:
            if c == "word":
                v = (self._wordh[:n] + c1) * _u64(_H2)
            elif c == "bigram":
                v = (self._wordh[:n] + self._pword[:n] * _u64(_H3) + c1) * _u64(_H1)
            elif c == "column":
                v = (self._above[:n].astype(np.uint64) << _u64(8)) | c1

            elif c == "field":
                v = self._wordh[:n] * _u64(_H3) + self._field[:n].astype(np.uint64)
            elif c == "sparse":  # the 2nd and 3rd last bytes
                v = (h8 >> _u64(8)) & _u64(0xFFFF)
            elif c == "o8":
                v = h8.copy()
            elif c in ("linepos", "blankpos"):  # position in the line with the last byte
                v = (np.minimum(self._col[:n], 255).astype(np.uint64) << _u64(8)) | c1
                if c == "blankpos":  # ... or, on a line blank so far, the byte above
                    above = _u64(1 << 20) | (self._above[:n].astype(np.uint64) << _u64(8)) | c1
                    v = np.where(self._blank[:n] != 0, above, v)
            elif c == "shape":  # the classes of the last 8 bytes with the last byte
                v = (_shape(h8, 8) << _u64(8)) | c1
            elif c == "above2":  # the byte above with the last two bytes
                v = (self._above[:n].astype(np.uint64) << _u64(16)) | (h8 & _u64(0xFFFF))
            elif c == "template":  # the line's template with the last byte
                v = (self._tmpl[:n] + c1) * _u64(_H3)
            elif c == "ind2":  # the last two bytes and what followed them last time
                c2 = h8 & _u64(0xFFFF)
                v = (self._ind2[c2.astype(np.int64)].astype(np.uint64) << _u64(16)) | c2
            elif c == "ptemplate":  # the previous line's template, this line's, the last byte
                v = (self._ptmpl[:n] * _u64(_H1) + self._tmpl[:n] + c1) * _u64(_H3)
            elif c == "fieldabove":  # the two bytes at this offset of this field one line up
                ab, ab2 = self._field_above(n)
                f = self._field[:n].astype(np.uint64)
                v = (((ab << _u64(9)) | ab2) << _u64(8) | c1) * _u64(_H1) + f
            elif c == "tmplabove":  # the same, in the last line of the same template so far
                ab, ab2 = tab
                h = (((ab << _u64(9)) | ab2) << _u64(8) | c1) * _u64(_H1)
                v = (h + self._tmpl[:n]) * _u64(_H3)
            elif c == "tokabove":  # the bytes at this offset of the token after the same
                # template last time, the offset (saturating at 15) and the last byte
                ab, ab2 = tok
                off = np.minimum(self._col[:n] - self._tks[:n], 15).astype(np.uint64)
                v = ((((ab << _u64(9)) | ab2) << _u64(8) | c1) * _u64(_H1) + off) * _u64(_H2)
            elif c == "tmplcmp":  # tmplabove's byte, how this field compares, the template
                h = ((tab[0] << _u64(2)) | self._tabcmp[:n].astype(np.uint64)) * _u64(_H1)
                v = (h + self._tmpl[:n]) * _u64(_H3)
            elif c in ("tokcmp", "tokrun"):  # tokabove's byte, how this token compares so
                # far; tokrun: with the token's opening byte and the run of unequal tokens
                v = (tok[0] << _u64(2)) | self._tokcmp[:n].astype(np.uint64)
                if c == "tokrun":
                    v |= (self._toksep[:n].astype(np.uint64) << _u64(11)) | (
                        self._tokdiffs[:n].astype(np.uint64) << _u64(20)
                    )
            elif c == "keyvalue":  # the key's last value: two bytes, and how this compares
                h = (((kv[0] << _u64(9)) | kv[1]) << _u64(2)) | self._kvcmp[:n].astype(np.uint64)
                v = h * _u64(_H1)
            elif c == "ind1":  # the last byte and the three that followed it the last times
                v = (self._ind1[c1.astype(np.int64)].astype(np.uint64) << _u64(8)) | c1
            elif c == "ind4":  # the two bytes that followed the last four, the last byte
                v4 = self._ind4[_ind4_key(h8)].astype(np.uint64)
                v = ((v4 << _u64(8)) | c1) * _u64(_H1)
            elif c == "align":  # the byte the align pointer expects, its run, the match's agreement
                ap = self._align[:n, 0]
                ab = np.where(ap >= 0, self._hist[np.maximum(ap, 0)].astype(np.int64), 256)
                r = np.minimum(self._align[:n, 1], 15)
                agree = mok & (ap >= 0) & (mbyte == ab)
                v = ((((ab << 4) | r) << 1 | agree) << 8).astype(np.uint64) | c1
                v = v * _u64(_H1)
            elif c == "tmplnext":  # its byte, how this field compares so far, the field index
                h = ((self._nb[:n] << 2) | self._ncmp[:n]).astype(np.uint64) * _u64(_H1)
                v = (h + self._field[:n].astype(np.uint64)) * _u64(_H2)
            elif c == "tmplnext2":  # the same for tmplnext2
                n2 = self._next2[:n]
                h = ((n2[:, N2_B] << 2) | n2[:, N2_CMP]).astype(np.uint64) * _u64(_H1)
                v = (h + self._field[:n].astype(np.uint64)) * _u64(_H3)
            elif c == "keyword":  # the last word before a ':' or '=', the word, the last byte
                v = ((tx[:, T_KEY] * _u64(_H2) + tx[:, T_W0]) * _u64(_H3) + c1) * _u64(_H1)
            elif c == "headabove":  # the head of the line above, this line's template so far
                v = (self._lhead[:n, 1] * _u64(_H1) + self._tmpl[:n] + c1) * _u64(_H2)
            elif c == "wordskip":  # the word so far, the last byte, the word before the last
                v = ((tx[:, T_W0] * _u64(_H3) ^ tx[:, T_W2]) * _u64(_H1) ^ c1) * _u64(_H2)
            elif c == "wordgap":  # the case-folded word so far, the gap before it
                v = (tx[:, T_W0] * _u64(_H3) + tx[:, T_G0]) * _u64(_H1)
            elif c == "blockword":  # the same word, the 1 KiB block of the stream it is in
                block = _u64((self._pos0 + self._step) >> 10)  # (the next byte's position)
                v = (block * _u64(_H3) + tx[:, T_W0]) * _u64(_H1)
            elif c == "charmask":  # the classes of the last four bytes
                v = tx[:, T_MASK] * _u64(_H2)
            elif c == "gapwords":  # the two words before, each with the gap after it
                h = (tx[:, T_G0] * _u64(_H3) + tx[:, T_W1]) * _u64(_H1) + tx[:, T_G1]
                v = (h * _u64(_H2) + tx[:, T_W2]) * _u64(_H3)
            elif c in ("matchbyte", "matchbyte3"):  # the predicted byte (256: none), its
                ml = self._mlen[:n]  # length, the last byte (matchbyte3: the last three)
                mb = np.where(mok, mbyte, 256).astype(np.uint64)
                lb = np.where(mok, np.where(ml < 16, ml, 16 + (ml >= 32)), 0).astype(np.uint64)
                if c == "matchbyte":
                    v = (((mb << _u64(5)) | lb) << _u64(8)) | c1
                else:
                    v = (((mb << _u64(5)) | lb) * _u64(_H3) ^ (h8 & _u64(0xFFFFFF))) * _u64(_H1)
            else:  # shapefield: the classes of the last 4 bytes, the field index, the last byte
                f = self._field[:n].astype(np.uint64)
                v = (((_shape(h8, 4) << _u64(6)) | f) << _u64(8)) | c1
            self._ctx_vals[:n, j] = v
        self._nibble_slots(n, np.zeros(n, dtype=np.int64))
        # Match model: counter slot per bit (length bucket, expected bit, bit position),
        # weight-set offset (match bucket 0..3), APM2 context (last byte).
        mbucket = np.where(mok, MATCH_BUCKET[np.minimum(self._mlen[:n], 64)], 0)
        shifts = np.arange(7, -1, -1, dtype=np.int64)
        self._ebit = (mbyte[:, None] >> shifts) & 1  # (n, 8) the bits the match predicts
        self._midx = self._match_off + (mbucket[:, None] * 2 + self._ebit) * 16 + np.arange(8)
        self._wsel = np.minimum(mbucket, 3) << 8
        self._wsel2 = self._w2_off + (c1.astype(np.int64) << 3) * self._n_inputs
        # APM points (lo, lo + 1) of APM1 (partial byte) and APM2 (and the last byte).
        a2 = self._apm2_off + (c1.astype(np.int64) << 8) * APM_POINTS
        self._abase[:n, 2] = a2
        self._abase[:n, 3] = a2 + 1

    def _field_offset(self, n: int) -> I64:
        """The next byte's offset within its field (streams 0..n-1)."""
        return self._col[:n] - self._cfields[self._rows[:n], self._field[:n]]

    def _field_above(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The bytes at the next byte's offset within its field, and the one after, in the
        same field of the previous line (see _bytes_at)."""
        rows = self._rows[:n]
        pf = self._pfields[rows, self._field[:n]]
        return self._bytes_at(
            n, self._pline[:n] + pf, rows, pf >= 0, self._field_offset(n), self._line[:n]
        )

    def _entry_bytes(self, n: int, cand: I64, off: I64) -> tuple[np.ndarray, np.ndarray]:
        """The same after the start a field or token table entry names (``(position + 1)
        << 16 | row``, 0: none), in any row, up to the byte coded last."""
        nxt = self._line[:n] + self._col[:n]
        return self._bytes_at(n, (cand >> 16) - 1, cand & 0xFFFF, cand > 0, off, nxt)

    def _template_above(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The same in the field where the line's template up to this field was last seen."""
        return self._entry_bytes(n, self._tfs[:n], self._field_offset(n))

    def _token_above(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The same for the current token, from the token table's entry."""
        return self._entry_bytes(n, self._tkc[:n], self._col[:n] - self._tks[:n])

    def _bytes_at(
        self, n: int, start: I64, row: I64, valid: np.ndarray, off: I64, limit: I64
    ) -> tuple[np.ndarray, np.ndarray]:
        """The bytes (uint64, 256: none) at ``start + off`` and the one after in ``row``'s
        ring, where ``valid``, before position ``limit`` and still in the ring."""
        nxt = self._line[:n] + self._col[:n]  # position of the next byte
        ring_mask = self._ring - 1
        base = row << self._ring_bits
        out = []
        for a in (start + off, start + off + 1):
            ok = valid & (a < limit) & (nxt - a <= ring_mask)
            byte = self._hist[base + (a & ring_mask)].astype(np.uint64)
            out.append(np.where(ok, byte, _u64(256)))
        return out[0], out[1]

    @staticmethod
    def _open_start(table: I64, bits: int, h: U64, rows: I64, pos: int) -> I64:
        """Where a field or token keyed by hash ``h`` last opened (the table's entries),
        then record these openings at position pos + 1. Every stream reads before any
        writes, and the table keeps the maximum (the most recent, then the highest row):
        order-independent, like the match table."""
        key = (h >> _u64(64 - bits)).astype(np.int64)
        found = table[key]
        np.maximum.at(table, key, ((pos + 2) << 16) | rows)
        return found

    def _nibble_slots(self, n: int, hi: I64) -> None:
        """Choose each context's 16-counter slot for the next nibble of streams 0..n-1.

        ``hi`` is 0 for the high nibble, 1 + the high nibble for the low one.
        """
        if n == 0:
            return
        blk = self._blk
        if self._direct_cols.size:
            v = self._ctx_vals[:n, self._direct_cols].astype(np.int64)
            blk[:n, self._direct_cols] = (
                self._ctx_off[self._direct_cols] + (v * 17 + hi[:, None]) * 16
            )
        if self._hashed_cols.size:
            hv = self._ctx_vals[:n, self._hashed_cols]
            cols = self._hashed_cols.astype(np.uint64)
            h = (hv + hi.astype(np.uint64)[:, None] * _u64(_H3) + cols) * _u64(_H1)
            h = (h ^ (h >> _u64(29))) * _u64(_H2)
            slot = (h >> _u64(64 - (self.table_bits - 4))).astype(np.int64)
            off = self._ctx_off[self._hashed_cols]
            if self.slot_check:
                chk = ((h >> _u64(16)) & _u64(0xFFFF)).astype(np.int64) + 1
                blk[:n, self._hashed_cols] = self._checked_slots(off, slot, chk)
            else:
                blk[:n, self._hashed_cols] = off + slot * 16

    def _checked_slots(self, off: I64, slot: I64, chk: I64) -> I64:
        """slot_check: the slot of each (stream, hashed context), claiming it if needed.

        Entry 0 of a slot (no counter uses it) holds a 16-bit check of the context that
        owns the slot, 1..65536 (never a counter's value). Slots form sets of 4 (slot
        numbers 4k..4k+3). A context looks for its check in its own slot, then in the
        others of the set (slot + 1, + 2, + 3, wrapping in the set); when none holds it,
        it takes the slot whose first counter has seen the fewest bits (an unclaimed slot
        counts -1; the first in that order on a tie), with fresh counters. Streams claim
        one after another in row order (two streams may want one slot), so this loops
        over streams, vectorised over contexts (each has its own table region).
        """
        t = self._t
        out = np.empty_like(slot)
        fresh = P_HALF << N_BITS
        ways = np.arange(4)
        rows = np.arange(slot.shape[1])
        for i in range(slot.shape[0]):
            s = slot[i][:, None]
            cand = off[:, None] + ((s & ~3) + ((s + ways) & 3)) * 16  # (contexts, 4)
            v = t[cand]
            hit = v == chk[i][:, None]
            mine = hit.any(axis=1)
            seen = np.where((v >= 1) & (v <= 65536), t[cand + 1] & N_MASK, -1)
            victim = cand[rows, seen.argmin(axis=1)]  # argmin: the first on a tie
            claim = ~mine
            new = victim[claim]
            t[new] = chk[i][claim]
            t[new[:, None] + np.arange(1, 16)] = fresh
            out[i] = np.where(mine, cand[rows, hit.argmax(axis=1)], victim)
        return out

    def _end_byte(self, n: int) -> None:
        """The byte of streams 0..n-1 is complete: update the per-stream history."""
        byte = self._c0[:n] - 256  # (n,)
        rows = self._rows[:n]
        pos = self._pos0 + self._step  # position of this byte in every active stream
        ring_mask = self._ring - 1
        hist = self._hist
        row_base = rows << self._ring_bits
        hist[row_base + (pos & ring_mask)] = byte.astype(np.uint8)
        ub = byte.astype(np.uint64)
        # The indirect table: this byte follows the pair before it. Values come from the
        # table as it was before the step; streams that share a pair leave the value of
        # the highest row (the C kernel writes in row order).
        if self._uses_ind2:
            pair = (self._h8[:n] & _u64(0xFFFF)).astype(np.int64)
            _write_highest_row(self._ind2, pair, ((self._ind2[pair] << 8) | byte) & 0xFFFF)
        if self._uses_ind1:  # ... and the byte before it
            prev = (self._h8[:n] & _u64(0xFF)).astype(np.int64)
            _write_highest_row(self._ind1, prev, ((self._ind1[prev] << 8) | byte) & 0xFFFFFF)
        if self._uses_ind4:  # ... and the four bytes before it
            key = _ind4_key(self._h8[:n])
            _write_highest_row(self._ind4, key, ((self._ind4[key] << 8) | byte) & 0xFFFF)
        self._h8[:n] = (self._h8[:n] << _u64(8)) | ub
        if self._uses_text:
            self._text_step(n, byte)
        token_end = ~ALNUM[byte]  # fields end at a space or a newline, tokens at any non-alnum
        if self._uses_tabcmp:
            sep = (byte == 32) | (byte == 10)
            self._tabcmp[:n] = _compare_step(self._tabcmp[:n], byte, self._tab[:n], sep)
        if self._uses_tokrun:  # a token ends unequal (the run grows) or equal, or the line ends
            grown = np.minimum(self._tokdiffs[:n] + 1, 3)
            run = np.where((self._tokcmp[:n] != CMP_EQUAL) & (byte != 10), grown, 0)
            self._tokdiffs[:n] = np.where(token_end, run, self._tokdiffs[:n])
        if self._uses_tokcmp:
            self._tokcmp[:n] = _compare_step(self._tokcmp[:n], byte, self._tob[:n], token_end)
        if self._uses_ktab:
            self._kvcmp[:n] = _compare_step(self._kvcmp[:n], byte, self._kvb[:n], token_end)

        # Log structure: word hash, column, field index, line starts, the byte above.
        is_word = WORD_BYTE[byte]
        ended = (~is_word) & (self._wordh[:n] != 0)
        self._pword[:n] = np.where(ended, self._wordh[:n], self._pword[:n])
        self._wordh[:n] = np.where(is_word, (self._wordh[:n] + ub + _u64(1)) * _u64(_H1), _u64(0))
        nl = byte == 10
        # The line's template: its bytes, every run of digits as one marker.
        prev = (self._h8[:n] >> _u64(8)) & _u64(0xFF)
        dig = (byte >= 48) & (byte <= 57)
        pdig = (prev >= _u64(48)) & (prev <= _u64(57))
        tmpl = self._tmpl[:n]
        grown = np.where(dig, tmpl + _u64(_TEMPLATE_DIGITS), tmpl + ub + _u64(1)) * _u64(_H2)
        self._ptmpl[:n] = np.where(nl, tmpl, self._ptmpl[:n])
        self._tmpl[:n] = np.where(nl, _u64(0), np.where(dig & pdig, tmpl, grown))
        if self._uses_blank:  # a newline starts a blank line, any byte but a blank ends it
            blank = (byte == 32) | (byte == 9)
            self._blank[:n] = (nl | ((self._blank[:n] != 0) & blank)).astype(np.int64)
        if self._uses_lhead:  # a line's head: its template at column HEAD_BYTES - 1 (col is
            lh = self._lhead[:n]  # still this byte's), or all of it at a shorter line's end
            col = self._col[:n]
            head = np.where(col >= HEAD_BYTES, lh[:, 0], self._ptmpl[:n])
            lh[:, 1] = np.where(nl, head, lh[:, 1])
            lh[:, 0] = np.where(~nl & (col == HEAD_BYTES - 1), self._tmpl[:n], lh[:, 0])
        self._pline[:n] = np.where(nl, self._line[:n], self._pline[:n])
        self._line[:n] = np.where(nl, pos + 1, self._line[:n])
        self._col[:n] = np.where(nl, 0, self._col[:n] + 1)
        # A space opens the next field (up to MAX_FIELD) at the next column; a newline
        # makes this line's field starts the previous line's.
        opens = (byte == 32) & (self._field[:n] < MAX_FIELD) & ~nl
        if opens.any():
            r = rows[opens]
            self._cfields[r, self._field[:n][opens] + 1] = self._col[:n][opens]
        if nl.any():
            r = rows[nl]
            self._pfields[r] = self._cfields[r]
            self._cfields[r] = -1
            self._cfields[r, 0] = 0
        if self._uses_ftab:
            # A field opens after a newline or a space: where did the line's template so
            # far (with the field index) last open one?
            ev = nl | opens
            if ev.any():
                field = (self._field[:n][ev] + 1).astype(np.uint64)
                h = np.where(nl[ev], _u64(0), (self._tmpl[:n][ev] + field) * _u64(_H2))
                self._tfs[rows[ev]] = self._open_start(self._ftab, FTAB_BITS, h, rows[ev], pos)
        if self._uses_ntab:
            self._next_field(n, byte, nl, opens, pos)
        if self._uses_ttab:
            # A token opens after every byte that is not a letter or digit: the same, in
            # the token table, keyed by the template so far alone.
            ev = token_end
            if ev.any():
                h = np.where(nl[ev], _u64(0), self._tmpl[:n][ev] * _u64(_H2))
                self._tkc[rows[ev]] = self._open_start(self._ttab, TTAB_BITS, h, rows[ev], pos)
                self._tks[rows[ev]] = self._col[:n][ev]
                self._toksep[rows[ev]] = byte[ev]
                if self._uses_ktab:  # keyed by the last word and this byte instead
                    pw = self._pword[:n][ev]
                    h = np.where(nl[ev], _u64(0), (pw + ub[ev] + _u64(1)) * _u64(_H2))
                    self._kvc[rows[ev]] = self._open_start(
                        self._ktab, KTAB_BITS, h, rows[ev], pos
                    )
        self._field[:n] = np.where(nl, 0, np.minimum(self._field[:n] + (byte == 32), MAX_FIELD))
        ab_pos = self._pline[:n] + self._col[:n]
        # The byte above exists when the previous line is long enough and still in the ring.
        has_above = (ab_pos < self._line[:n]) & (pos + 1 - ab_pos <= ring_mask)
        above = hist[row_base + (ab_pos & ring_mask)].astype(np.int64)
        self._above[:n] = np.where(has_above, above, 256)

        # Match model: extend the current match, or look one up by the last match_min bytes.
        ok = self._mok[:n]  # still true after 8 bits: the predicted byte was right
        mlen = np.where(ok, np.minimum(self._mlen[:n] + 1, 65535), 0)
        mptr = self._mptr[:n]
        mptr = ((mptr >> self._ring_bits) << self._ring_bits) + ((mptr + 1) & ring_mask)
        nxt = pos + 1
        if nxt >= self.match_min:
            key_mask = _u64((1 << (8 * self.match_min)) - 1)
            key = ((self._h8[:n] & key_mask) * _u64(_H2)) >> _u64(64 - self.match_hash_bits)
            key_i = key.astype(np.int64)
            cand = self._mtab[key_i]
            found = (~ok) & (cand > 0)
            if found.any():
                c_pos = (cand >> 16) - 1  # position of the byte after the candidate context
                c_row = cand & 0xFFFF
                # Verify the candidate on up to 16 preceding bytes: hash collisions and
                # overwritten ring slots give lengths below match_min and are dropped.
                back = np.arange(1, 17, dtype=np.int64)
                own = hist[row_base[:, None] + ((nxt - back) & ring_mask)]
                oth = hist[
                    (c_row[:, None] << self._ring_bits) + ((c_pos[:, None] - back) & ring_mask)
                ]
                valid = (back <= c_pos[:, None]) & (nxt - c_pos[:, None] + back <= ring_mask)
                eq = (own == oth) & valid
                vlen = np.cumprod(eq, axis=1).sum(axis=1)
                take = found & (vlen >= self.match_min)
                mlen = np.where(take, vlen, mlen)
                mptr = np.where(take, (c_row << self._ring_bits) + (c_pos & ring_mask), mptr)
            # Record this position; several streams may share a key, so keep the maximum
            # (the most recent position, then the highest row): order-independent.
            np.maximum.at(self._mtab, key_i, ((nxt + 1) << 16) | rows)
        self._mlen[:n] = mlen
        self._mptr[:n] = mptr
        self._mok[:n] = mlen > 0
        if self._uses_align:
            self._align_step(n, byte, mlen, mptr)
        self._step += 1

    def _next_field(self, n: int, byte: I64, nl: np.ndarray, opens: np.ndarray, pos: int) -> None:
        """tmplnext after `byte` (the field index not yet moved on): a field that ends
        leaves its value in the value table under its key; one that opens looks up the
        value the same template's field had last time, and where the field that followed
        that value began. Reads see the tables as before the step (the value table is
        written after them, the highest row's value staying; the successor table keeps
        the most recent position, as the field table)."""
        rows = self._rows[:n]
        sep = nl | (byte == 32)
        self._ncmp[:n] = _compare_step(self._ncmp[:n], byte, self._nb[:n], sep)
        n2 = self._next2[:n]
        if self._uses_ntab2:
            n2[:, N2_CMP] = _compare_step(n2[:, N2_CMP], byte, n2[:, N2_B], sep)
        ended = sep & (self._nkey[:n] >= 0)
        keys, vals = self._nkey[:n][ended], self._nval[:n][ended] + _u64(1)
        ub = byte.astype(np.uint64)
        self._nval[:n] = np.where(sep, _u64(0), (self._nval[:n] + ub + _u64(1)) * _u64(_H2))
        # a space in the last field (saturated) opens none: its value is not recorded
        self._nkey[:n] = np.where((byte == 32) & ~opens, -1, self._nkey[:n])
        ev = nl | opens
        if ev.any():
            field = np.where(nl[ev], 0, self._field[:n][ev] + 1).astype(np.uint64)
            tmpl = np.where(nl[ev], _u64(0), self._tmpl[:n][ev])
            t = (tmpl + field + _u64(1)) * _u64(_H2)
            key = (t >> _u64(64 - NTAB_BITS)).astype(np.int64)
            h = (self._vtab[key] + t) * _u64(_H1)
            h = (h ^ (h >> _u64(29))) * _u64(_H2)
            self._nfs[rows[ev]] = self._open_start(self._ntab, NTAB_BITS, h, rows[ev], pos)
            self._nkey[rows[ev]] = key
            if self._uses_ntab2:  # by the value before the last as well
                h = (self._vtab2[key] * _u64(_H3) + self._vtab[key] + t) * _u64(_H1)
                h = (h ^ (h >> _u64(29))) * _u64(_H2)
                n2[ev, N2_FS] = self._open_start(self._ntab2, NTAB_BITS, h, rows[ev], pos)
        if keys.size:
            if self._uses_ntab2:  # (the replaced values, read before any is written)
                _write_highest_row(self._vtab2, keys, self._vtab[keys])
            _write_highest_row(self._vtab, keys, vals)

    def _text_step(self, n: int, byte: I64) -> None:
        """The text state (TEXT_COLS) after `byte`: a word byte extends the word (the
        first one closes the gap before it), any other byte extends the gap (the first
        one closes the word)."""
        tx = self._text[:n]
        w0, g0 = tx[:, T_W0].copy(), tx[:, T_G0].copy()
        word = WORD_BYTE[byte]
        starts, ends = word & (w0 == 0), ~word & (w0 != 0)
        tx[:, T_G1] = np.where(starts, g0, tx[:, T_G1])
        # (inside a word the gap is 0 already: its first byte closed it)
        tx[:, T_G0] = np.where(word, _u64(0), (g0 + GAP_BYTE[byte] + _u64(1)) * _u64(_H2))
        tx[:, T_W0] = np.where(word, (w0 + FOLD[byte] + _u64(1)) * _u64(_H1), _u64(0))
        tx[:, T_W2] = np.where(ends, tx[:, T_W1], tx[:, T_W2])
        tx[:, T_W1] = np.where(ends, w0, tx[:, T_W1])
        tx[:, T_KEY] = np.where((byte == 58) | (byte == 61), tx[:, T_W1], tx[:, T_KEY])
        tx[:, T_MASK] = ((tx[:, T_MASK] << _u64(8)) | CHAR_CLASS[byte]) & _u64(0xFFFFFFFF)

    def _align_step(self, n: int, byte: I64, mlen: I64, mptr: I64) -> None:
        """The align pointer after `byte` (see ALIGN_MIN): follow the repeat while it
        holds; after one that held ALIGN_MIN bytes breaks, stay at the byte it expected,
        for the repeat to go on after an insertion; a shorter run starts over from there.
        Idle for ALIGN_WAIT missed bytes (or never set), it takes the match model's."""
        a = self._align[:n]
        ap, run, wait, anchor = a[:, 0], a[:, 1], a[:, 2], a[:, 3]
        has = ap >= 0
        hit = has & (self._hist[np.maximum(ap, 0)] == byte)
        miss = has & ~hit
        freeze = miss & (run >= ALIGN_MIN)
        restart = miss & ~freeze  # a short run (back to the anchor) or none
        bits = self._ring_bits
        nxt_ap = ((ap >> bits) << bits) + ((ap + 1) & (self._ring - 1))
        ap = np.where(hit, nxt_ap, np.where(restart & (run > 0), anchor, ap))
        anchor = np.where(freeze, a[:, 0], anchor)
        wait = np.where(freeze, 0, wait + restart)
        run = np.where(hit, run + 1, np.where(miss, 0, run))
        adopt = ((ap < 0) | ((run == 0) & (wait > ALIGN_WAIT))) & (mlen > 0)
        a[:, 0] = np.where(adopt, mptr, ap)
        a[:, 1] = np.where(adopt, np.maximum(mlen, ALIGN_MIN), run)
        a[:, 2] = np.where(adopt, 0, wait)
        a[:, 3] = np.where(adopt, mptr, anchor)

    # ---------------------------------------------------------------- lockstep

    def predict(self, n_active: int) -> np.ndarray:
        n = int(n_active)
        if not 0 <= n <= self._n_prev or (self._bit and n != self._n_prev):
            raise ValueError(
                f"n_active must be <= {self._n_prev} and only change on byte boundaries, got {n}"
            )
        self._n_prev = n
        if self._kernel is not None:
            out = np.empty((n, 2), dtype=np.uint32)
            self._check_external(n)
            self._kernel.predict(n, self._bit, self._step, out)
            self._predicted = n
            return out
        return self._predict_numpy(n)

    def _selector(self, name: str, n: int, bit: int) -> I64:
        """The value of extra weight-set selector ``name`` for streams 0..n-1."""
        h8 = self._h8[:n]
        if name == "field":
            return self._field[:n]
        if name == "column":
            return np.minimum(self._col[:n], 63)
        if name == "shape2":
            c12 = h8 & _u64(0xFFFF)
            cls = BYTE_CLASS[(c12 & _u64(0xFF)).astype(np.int64)] * 8
            return cls + BYTE_CLASS[(c12 >> _u64(8)).astype(np.int64)]
        if name == "byte2":
            return ((h8 >> _u64(8)) & _u64(0xFF)).astype(np.int64)
        if name == "above":
            return self._above[:n]
        if name == "tabove":
            return self._tab[:n]
        # match: the length while the match still holds (saturating), the expected bit
        mlen = np.where(self._mok[:n], np.minimum(self._mlen[:n], 31), 0)
        return mlen * 2 + self._ebit[:n, bit]

    def set_external(self, tables: np.ndarray, first_byte: int) -> None:
        """Give the external input's tables for bytes ``first_byte ..`` of every stream.

        ``tables``: (B, K, 256) integer frequencies in [0, 2**32) (int64, or uint32 read
        in place: the model reads them until the next set_external), the distribution of
        byte ``first_byte + k`` of each stream (a row summing to 0 gives 1/2); predict reads
        P(next bit = 1) from the row of the byte being coded, as the exact ratio of the
        sum over the byte values that extend the partial byte with a 1 to the sum over
        those that extend it (stretched like every other input).
        """
        if not self.external_input:
            raise ValueError("this model has no external input")
        tab = np.asarray(tables)
        if tab.ndim != 3 or tab.shape[0] != max(self._b, 1) or tab.shape[2] != 256:
            raise ValueError(f"tables must be ({max(self._b, 1)}, K, 256), got {tab.shape}")
        if tab.dtype == np.uint32:  # an engine's tables: in range by type, read in place
            tab = np.ascontiguousarray(tab)
        else:
            tab = np.ascontiguousarray(tab, dtype=np.int64)
        if tab.dtype != np.uint32 and tab.size and (
            tab.min() < 0 or tab.max() >= 1 << 32
        ):
            raise ValueError("external table entries must lie in [0, 2**32)")
        self._ext = tab
        self._ext_first = int(first_byte)
        if self._kernel is not None:
            self._kernel.set_ext(tab, self._ext_first)

    def _check_external(self, n: int) -> None:
        if self.external_input and n and not 0 <= self._step - self._ext_first < self._ext.shape[1]:
            raise ValueError(f"no external table for byte {self._step} (set_external first)")

    def _external_stretch(self, n: int, bit: int, c0: I64) -> I64:
        """stretch(P(bit = 1)) from each stream's table of the current byte (reference)."""
        tab = self._ext[:n, self._step - self._ext_first].astype(np.int64)  # (n, 256)
        cum = np.zeros((n, 257), dtype=np.int64)
        np.cumsum(tab, axis=1, out=cum[:, 1:])
        lo = (c0 - (1 << bit)) << (8 - bit)
        half = 1 << (7 - bit)
        rows = np.arange(n)
        top = cum[rows, lo + 2 * half]
        s = top - cum[rows, lo]
        s1 = top - cum[rows, lo + half]
        p = np.where(s > 0, (s1 * 4096 + s // 2) // np.maximum(s, 1), 2048)
        return STRETCH[np.clip(p, 1, 4095)]

    def _predict_numpy(self, n: int) -> np.ndarray:
        """The reference implementation of ``predict`` (the C kernel matches it bit for bit)."""
        bit = self._bit
        nc = self._n_ctx
        c0 = self._c0[:n]
        idx = self._idx[:n]
        val = self._val[:n]
        x = self._x[:n]
        mok = self._mok[:n]
        # Context counters: the context's slot plus the position in the nibble; the match
        # counter (slot 0 of bucket 0 when no match predicts).
        np.add(self._blk[:n], self._c0n[:n, None], out=idx[:, :nc])
        idx[:, nc] = np.where(mok, self._midx[:n, bit], self._match_off + bit)
        val[:, : nc + 1] = self._t[idx[:, : nc + 1]]
        pc = self._pcl[:n, : nc + 1]  # probabilities, clipped into [0, 2**22)
        np.right_shift(val[:, : nc + 1], N_BITS, out=pc)
        np.minimum(pc, P_MAX, out=pc)
        np.maximum(pc, 0, out=pc)
        ni = self._n_inputs
        ns = self._n_sets
        x[:, : nc + 1] = STRETCH[pc >> (P_BITS - 12)]
        xs = x[:, : ns * ni].reshape(n, ns, ni)
        xs[:, 1:, : nc + 1] = x[:, None, : nc + 1]
        if self._n_ext:
            self._check_external(n)
            x[:, ns * ni] = self._external_stretch(n, bit, c0)
            idx[:, self._c_w + ns * ni] = self._ext_w_off + c0
        # Mixer: set A by partial byte and match state, set B by last byte and bit, then
        # one set per extra selector (its context value and the bit position).
        wb = self._wbase[:n]
        wb[:, 0] = (c0 + mok * self._wsel[:n]) * ni + self._w_off
        wb[:, 1] = self._wsel2[:n] + bit * ni
        for e, m in enumerate(self.mixer_contexts):
            wb[:, 2 + e] = self._sel_off[e] + (self._selector(m, n, bit) * 8 + bit) * ni
        wcols = idx[:, self._c_w : self._c_w + ns * ni]
        np.add(wb[:, :, None], self._w_cols, out=wcols.reshape(n, ns, ni))
        w = self._t[idx[:, self._c_w :]]
        dot = np.einsum("ij,ij->i", x, w) >> 16
        np.minimum(dot, 2047, out=dot)
        np.maximum(dot, -2047, out=dot)
        dot += 2048
        p12 = SQUASH[dot]
        # APM/SSE: interpolate between the two points around the mixer's stretch value.
        posn = dot * (APM_POINTS - 1)
        wt = posn & 4095
        a = c0 * APM_POINTS + (posn >> 12)
        ia = idx[:, self._c_apm : self._c_w]
        np.add(self._abase[:n], a[:, None], out=ia)
        va = val[:, self._c_apm : self._c_w]
        va[...] = self._t[ia]
        pa = self._pcl[:n, self._c_apm :]
        np.right_shift(va, N_BITS, out=pa)
        np.minimum(pa, P_MAX, out=pa)
        np.maximum(pa, 0, out=pa)
        wts = wt[:, None] * self._apm_wmul + self._apm_wadd
        # (mixer + APM1 + 2 * APM2) / 4, APM values in 22 bits weighted by 12-bit wts.
        s_apm = np.einsum("ij,ij->i", pa, wts)
        if not self.apm_match:
            p16 = ((p12 << P_BITS) + s_apm) >> (P_BITS - 16 + 12 + 2)  # p12 << 10: 22 bits
            # No clip needed: p12 in [1, 4095] and APM values clipped to 22 bits give
            # p16 in [4, 65531] (the APM weights sum to 3 * 4096).
        else:  # (mixer + APM1 + 2 APM2 + 2 APM3) / 6, clipped (the weights sum to 5 * 4096)
            mb = np.where(mok, self._hist[self._mptr[:n]].astype(np.int64), 256).astype(np.uint64)
            lb = np.where(mok, self._wsel[:n] >> 8, 0).astype(np.uint64)
            h3 = (((mb << _u64(2)) | lb) << _u64(8)) | c0.astype(np.uint64)
            a3 = ((h3 + _u64(1)) * _u64(_H1) >> _u64(48)).astype(np.int64) * APM_POINTS
            *self._a3, s3 = _apm_pair(self._apm3, a3 + (posn >> 12), wt)  # (kept for update)
            s3 *= 2
            if not self.apm_miss:
                p16 = (((p12 << P_BITS) + s_apm + s3) // 6) >> (P_BITS - 16 + 12)
            else:  # (mixer + APM1 + 2 APM2 + 2 APM3 + 4 APM4) / 10
                a4 = ((c0 << 4) | miss_state(self._misses[:n])) * APM_POINTS + (posn >> 12)
                *self._a4, s4 = _apm_pair(self._apm4, a4, wt)
                p16 = (((p12 << P_BITS) + s_apm + s3 + 4 * s4) // 10) >> (P_BITS - 16 + 12)
            p16 = self._p16 = np.clip(p16, self.final_min, 65535 - self.final_min)
        self._p12 = p12
        self._predicted = n
        out = np.empty((n, 2), dtype=np.uint32)
        out[:, 1] = p16
        out[:, 0] = 65536 - p16
        return out

    # ----------------------------------------------------- compiled whole frames

    def encode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, on_step: Any = None,
        external: Any = None, block_bytes: int = 1 << 13, prefetch: bool = False,
    ) -> list[bytes] | None:  # fmt: skip
        """The frame's rANS payloads from the C loops (see Predictor.encode_frame).

        ``external(first_byte, n_bytes)``: the external input's (B, n_bytes, 256) tables
        of those bytes, asked for once per block of ``block_bytes``. With ``prefetch``, a
        helper thread asks for the next block's while the kernel (which lets go of the
        GIL) codes this one: they only depend on the data, and the two take about as long
        (an engine pass, cm's loop), so compressing costs about the longer of the two."""
        if not self.compiled or grid.dtype != np.uint8:
            return None
        n_rows, n_steps = grid.shape
        lengths = self._check_lengths(lengths, n_rows, n_steps)
        self.begin(n_rows)
        grid = np.ascontiguousarray(grid)
        p16 = np.empty((n_steps, n_rows), dtype=np.uint16)
        block = 8 * block_bytes
        helper = ThreadPoolExecutor(1, "tinyzip-external") if prefetch and external else None
        ahead: Future[np.ndarray] | None = None
        try:
            for t0, t1, active in self._blocks(n_steps, lengths, on_step, block):
                if external is not None:
                    tables = ahead.result() if ahead else external(t0 // 8, (t1 - t0) // 8)
                    self.set_external(tables, t0 // 8)
                    t2 = min(n_steps, t1 + block)
                    ahead = (helper.submit(external, t1 // 8, (t2 - t1) // 8)
                             if helper is not None and t2 > t1 else None)
                self._kernel.encode_run(grid, active, p16, n_steps, t0, t1)
        finally:
            if helper is not None:
                helper.shutdown(wait=True)
        self._finish_run(n_steps, lengths)
        return list(_cm_kernel.encode_binary(p16, grid, lengths, n_steps))

    def decode_frame(
        self, grid: np.ndarray, lengths: np.ndarray, rows: np.ndarray, decoder: Any,
        on_step: Any = None, external: Any = None, trusted_tables: bool = False,
        stepper: Any = None, tables: np.ndarray | None = None, speculate: bool = False,
    ) -> bool:  # fmt: skip
        """Decode the frame's model rows with the C loops (see Predictor.decode_frame).

        ``external(first_byte, 1)``: as for encode_frame, asked for before every byte
        (its table may depend on the bytes decoded so far, which are in ``grid``);
        ``trusted_tables``: it returns (B, 1, 256) uint32, or int64 in range, handed to
        the kernel as they are. Or ``stepper`` (Engine.stepper(), reset to the frame's
        streams) with ``tables`` (B, 1, 256) uint32 for it to write: the kernel steps the
        engine itself before every byte, with no Python call between bytes (``speculate``:
        each next byte's step in a helper thread, on a guess of the byte; the same tables,
        sooner where the guess holds)."""
        if not self.compiled or grid.dtype != np.uint8 or decoder.freq_bits != 16:
            return False
        n_rows, n_steps = grid.shape
        lengths = self._check_lengths(lengths, n_rows, n_steps)
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.begin(n_rows)
        model_lengths = lengths[rows]
        x, cursor, limit, words = decoder.raw_state()
        # uint32 tables of the right shape, read in place: nothing to check or convert
        fast_ext = trusted_tables and self.external_input
        if stepper is not None:
            if not self.external_input or tables is None or external is not None:
                raise ValueError("a stepper needs external_input=True and tables, no external")
            self._kernel.set_ext(tables, 0)
        for t0, t1, active in self._blocks(n_steps, lengths, on_step):
            model_active = active_counts(model_lengths, t0, t1)
            if stepper is not None:
                self._kernel.decode_run(
                    grid, active, model_active, rows, x, cursor, limit, words, n_steps, t0,
                    t1, stepper, speculate,
                )  # fmt: skip
                decoder.account(model_active)
                continue
            # With an external input, one byte at a time: its table may depend on the
            # bytes decoded just before.
            step = 8 if external is not None else t1 - t0
            for tb in range(t0, t1, step):
                if external is not None:
                    tab = external(tb // 8, 1)
                    if fast_ext:  # (set_external's checks, a tenth of the time per byte)
                        self._kernel.set_ext(tab, tb // 8)
                    else:
                        self.set_external(tab, tb // 8)
                te = min(t1, tb + step)
                self._kernel.decode_run(
                    grid, active[tb - t0 : te - t0], model_active[tb - t0 : te - t0], rows,
                    x, cursor, limit, words, n_steps, tb, te,
                )  # fmt: skip
            decoder.account(model_active)
        self._finish_run(n_steps, lengths)
        return True

    @staticmethod
    def _check_lengths(lengths: np.ndarray, n_rows: int, n_steps: int) -> I64:
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        if lengths.shape != (n_rows,) or (
            n_rows and (lengths.max() > n_steps or lengths.min() < 0)
        ):
            raise ValueError("lengths must give each grid row's symbol count")
        if (np.diff(lengths) > 0).any() or (lengths % 8).any():
            raise ValueError("streams are whole bytes, sorted longest first")
        return lengths

    def _blocks(self, n_steps: int, lengths: I64, on_step: Any, block: int = 0) -> Any:
        """Step ranges of the C loops with their active counts, and progress between them.
        Blocks keep the (block,) count arrays small: (T,) int64 would be 32 MiB a frame."""
        block = block or 1 << 16
        for t0 in range(0, n_steps, block):
            if on_step is not None and t0 % (1 << 16) < block:
                on_step(t0, n_steps)
            t1 = min(n_steps, t0 + block)
            yield t0, t1, active_counts(lengths, t0, t1)

    def _finish_run(self, n_steps: int, lengths: I64) -> None:
        """The Python-side counters after a whole frame ran in C."""
        self._step = n_steps // 8
        self._bit = 0
        self._n_prev = int(np.count_nonzero(lengths >= n_steps)) if n_steps else self._b

    def update(self, symbols: np.ndarray) -> None:
        y = np.asarray(symbols, dtype=np.int64)
        n = self._predicted
        if y.shape != (n,):
            raise ValueError(f"update needs the {n} symbols of the last predict, got {y.shape}")
        self._predicted = -1
        if self._kernel is not None:
            self._kernel.update(np.ascontiguousarray(y), n, self._bit, self._step)
            if self._bit == 7:
                self._step += 1
            self._bit = (self._bit + 1) & 7
            return
        self._update_numpy(n, y)

    def _apm_pair_update(self, table: I64, idx: I64, val: I64, p: I64, y: I64) -> None:
        """The step of the points _apm_pair read toward the bits y, like the other APMs'
        (deltas from the values read, added with np.add.at)."""
        cnt = val & N_MASK
        d = (((y << P_BITS)[:, None] - p) * self._recip_apm[cnt]) >> 16
        d = (d << N_BITS) + (cnt < self.apm_limit)
        np.add.at(table, idx.ravel(), d.ravel())

    def _update_numpy(self, n: int, y: I64) -> None:
        """The reference implementation of ``update``."""
        val = self._val[:n, : self._c_w]
        dlt = self._dlt[:n]
        # Counters (contexts, match, APM points): move p toward the bit by 1/(count+1.5),
        # count up to the column's limit. Deltas come from pre-step values and add up in
        # np.add.at, so streams that share an entry do not depend on stream order.
        cnt = val & N_MASK
        d = dlt[:, : self._c_w]
        np.subtract((y << P_BITS)[:, None], self._pcl[:n], out=d)
        d[:, : self._c_apm] *= self._recip[cnt[:, : self._c_apm]]  # contexts, match
        d[:, self._c_apm :] *= self._recip_apm[cnt[:, self._c_apm :]]  # APM points
        d >>= 16
        d <<= N_BITS
        d += cnt < self._lim
        # Mixer: gradient step on coding cost, err in 12-bit probability units.
        err = (y << 12) - self._p12
        dw = dlt[:, self._c_w :]
        rate = mixer_rate(self.mixer_decay, self._pos0 + self._step)  # in 16ths
        np.multiply(self._x[:n], err[:, None] * rate, out=dw)
        if self.mixer_extra_rate != 16:  # the extra sets, after A and B
            ni, ns = self._n_inputs, self._n_sets
            rate_x = rate * self.mixer_extra_rate >> 4
            np.multiply(self._x[:n, 2 * ni : ns * ni], (err * rate_x)[:, None],
                        out=dw[:, 2 * ni : ns * ni])  # fmt: skip
        dw += 1 << (self.mixer_shift + 3)
        dw >>= self.mixer_shift + 4
        np.add.at(self._t, self._idx[:n].ravel(), dlt.ravel())
        if self.apm_match:  # its points like the other APMs'
            self._apm_pair_update(self._apm3, *self._a3, y)
        if self.apm_miss:  # likewise, and the miss history
            self._apm_pair_update(self._apm4, *self._a4, y)
            miss = (self._p16 >= 32768).astype(np.int64) != y
            self._misses[:n] = ((self._misses[:n] << 1) | miss) & 0xFFFF
        # Partial byte and nibble; the match stays on only while its bits were right.
        bit = self._bit
        self._mok[:n] &= self._ebit[:n, bit] == y
        self._c0[:n] = (self._c0[:n] << 1) | y
        self._c0n[:n] = (self._c0n[:n] << 1) | y
        self._bit = bit + 1
        if self._bit == 4:
            self._c0n[:n] = 1
            self._nibble_slots(n, self._c0[:n] - 15)  # 1 + the high nibble
        elif self._bit == 8:
            self._end_byte(n)
            self._bit = 0
            self._c0[:n] = 1
            self._c0n[:n] = 1
            self._byte_contexts(n)


def from_descriptor(desc: Any) -> ContextMixPredictor:
    """Rebuild a predictor from ``descriptor()`` output read from an archive header."""
    if not isinstance(desc, dict) or desc.get("name") != "cm":
        raise CorruptInputError(f"not a context-mixing descriptor: {desc!r}")
    if desc.get("version") != VERSION:
        raise CorruptInputError(f"unknown context-mixing version {desc.get('version')!r}")
    if "preset" in desc:
        preset = desc["preset"]
        if set(desc) != {"name", "version", "preset"} or not isinstance(preset, str) or (
            preset not in PRESETS
        ):
            raise CorruptInputError(f"unknown context-mixing preset {preset!r}")
        desc = {"name": "cm", "version": VERSION, "params": PRESETS[preset]}
    params = desc.get("params")
    if not isinstance(params, dict):
        raise CorruptInputError(f"context-mixing params must be an object, got {params!r}")
    allowed = _PARAM_NAMES | _OPTIONAL_PARAM_NAMES
    unknown = set(params) - allowed
    if unknown:
        raise CorruptInputError(f"unknown context-mixing params {sorted(unknown)}")
    missing = _PARAM_NAMES - set(params)
    if missing:
        raise CorruptInputError(f"missing context-mixing params {sorted(missing)}")
    kwargs = dict(params)
    ctx = kwargs.get("contexts")
    if not isinstance(ctx, list) or not all(isinstance(c, str) for c in ctx):
        raise CorruptInputError(f"context-mixing contexts must be a list of names, got {ctx!r}")
    kwargs["contexts"] = tuple(ctx)
    # Older archives have no extra weight sets.
    sel = kwargs.get("mixer_contexts", [])
    if not isinstance(sel, list) or not all(isinstance(m, str) for m in sel):
        raise CorruptInputError(
            f"context-mixing mixer_contexts must be a list of names, got {sel!r}"
        )
    kwargs["mixer_contexts"] = tuple(sel)
    if "external_input" in kwargs and kwargs["external_input"] is not True:
        raise CorruptInputError("context-mixing external_input must be true when present")
    # Older archives have no slot checks and start every frame's streams empty.
    for flag in ("slot_check", "carry_history", "apm_match", "apm_miss"):
        if kwargs.setdefault(flag, False) is not False and kwargs[flag] is not True:
            raise CorruptInputError(f"context-mixing {flag} must be true when present")
    # ... and the one counter rate of then, and a constant mixer rate.
    kwargs.setdefault("counter_offset", OLD_RATE_OFFSET)
    kwargs.setdefault("apm_offset", OLD_RATE_OFFSET)
    kwargs.setdefault("mixer_decay", 0)
    kwargs.setdefault("mixer_extra_rate", 16)
    kwargs.setdefault("final_min", 4)
    try:
        pred = ContextMixPredictor(**kwargs)
    except (ValueError, TypeError) as exc:
        raise CorruptInputError(f"bad context-mixing params: {exc}") from None
    if pred.full_descriptor() != desc:
        raise CorruptInputError(f"non-canonical context-mixing descriptor: {desc!r}")
    return pred


_PARAM_NAMES = frozenset(
    {
        "contexts",
        "table_bits",
        "history_bits",
        "match_hash_bits",
        "match_min",
        "counter_limit",
        "mixer_shift",
        "mixer_init",
        "apm_limit",
    }
)
#: Params added later: an archive without them used the earlier behaviour.
_OPTIONAL_PARAM_NAMES = frozenset(
    {
        "mixer_contexts", "external_input", "slot_check", "counter_offset", "apm_offset",
        "carry_history", "mixer_decay", "apm_match", "apm_miss", "mixer_extra_rate",
        "final_min",
    }
)  # fmt: skip

#: Named parameter sets an archive may give instead of the parameters themselves. Never
#: change or remove one (archives name them); add a new name for new defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "l3-2026-11": {
        "contexts": [
            "o0", "o1", "o2", "o3", "o4", "o6", "word", "bigram", "column", "field",
            "linepos", "shape", "above2", "shapefield", "template",
        ],
        "table_bits": 20, "history_bits": 22, "match_hash_bits": 20, "match_min": 6,
        "counter_limit": 255, "mixer_shift": 13, "mixer_init": 8000, "apm_limit": 127,
        "mixer_contexts": ["field", "column", "shape2", "byte2", "above", "match"],
    },
}  # fmt: skip
PRESETS["l3-2026-11+external"] = {**PRESETS["l3-2026-11"], "external_input": True}
# level 1 (--adapt fast)
PRESETS["l1-2026-11"] = {**PRESETS["l3-2026-11"], "contexts": ["o1", "o2", "o3", "o4"]}
PRESETS["l1-2026-11+external"] = {**PRESETS["l1-2026-11"], "external_input": True}
# slot checks, the indirect and match-byte contexts, faster counters and slower APMs
# (first 256 KiB of every file of ../shared/corpus, cm alone: 455,262 -> 440,986 payload
# bytes with the first three, 430,174 with the rates, 429,688 with 4-way slot sets:
# -5.6%), and histories carried from frame to frame (files above one frame)
PRESETS["l3-2026-12"] = {
    **PRESETS["l3-2026-11"],
    "contexts": PRESETS["l3-2026-11"]["contexts"] + ["ind2", "matchbyte"],
    "slot_check": True, "counter_offset": 23, "apm_offset": 400, "carry_history": True,
}  # fmt: skip
PRESETS["l3-2026-12+external"] = {**PRESETS["l3-2026-12"], "external_input": True}
PRESETS["l1-2026-12"] = {**PRESETS["l3-2026-12"], "contexts": list(LEVELS[1])}
PRESETS["l1-2026-12+external"] = {**PRESETS["l1-2026-12"], "external_input": True}
# the previous line's template and the byte above in the same field (the 256 KiB sample
# above: 429,688 -> 426,344 bytes, -0.8%); level 1 has neither, so l1-2026-12 stays
PRESETS["l3-2026-12b"] = {
    **PRESETS["l3-2026-12"],
    "contexts": PRESETS["l3-2026-12"]["contexts"]
    + ["ptemplate", "fieldabove", "tmplabove", "tokabove"],
    "mixer_contexts": list(TEMPLATE_MIXER_SELECTORS),
}  # fmt: skip
PRESETS["l3-2026-12b+external"] = {**PRESETS["l3-2026-12b"], "external_input": True}
# how each field and token compares with the one tmplabove and tokabove predicted (the
# 256 KiB sample above: 421,440 -> 414,236 bytes, -1.7%)
PRESETS["l3-2026-12c"] = {
    **PRESETS["l3-2026-12b"],
    "contexts": PRESETS["l3-2026-12b"]["contexts"] + ["tmplcmp", "tokcmp"],
}  # fmt: skip
PRESETS["l3-2026-12c+external"] = {**PRESETS["l3-2026-12c"], "external_input": True}
# the value the same key had last time, and tokcmp with the token's opening byte and the
# run of unequal tokens before it (the 256 KiB sample: 414,236 -> 410,546 bytes, -0.9%)
PRESETS["l3-2026-12d"] = {
    **PRESETS["l3-2026-12c"],
    "contexts": [c for c in PRESETS["l3-2026-12c"]["contexts"] if c != "tokcmp"]
    + ["keyvalue", "tokrun"],
}  # fmt: skip
PRESETS["l3-2026-12d+external"] = {**PRESETS["l3-2026-12d"], "external_input": True}
# the mixer's learning rate falls to half over the first bytes of a stream (the 256 KiB
# sample: 410,546 -> 408,254 bytes, -0.6%; whole files -0.8%)
PRESETS["l3-2026-12e"] = {**PRESETS["l3-2026-12d"], "mixer_decay": MIXER_DECAY}
PRESETS["l3-2026-12e+external"] = {**PRESETS["l3-2026-12e"], "external_input": True}
# two more indirect contexts and the align pointer, which waits out insertions in a repeat
# (whole corpus files, cm alone: 531,910 -> 525,536 bytes, -1.2%), then counter_offset 22
# and mixer_init 6000 (524,408). ("l3-2026-12f", which had these two and match_min 4,
# was committed and reverted on 2026-12-05: the name is not reused.)
PRESETS["l3-2026-12g"] = {
    **PRESETS["l3-2026-12e"],
    "contexts": PRESETS["l3-2026-12e"]["contexts"] + ["ind1", "ind4", "align"],
    # (mixer_init: MIXER_INIT until l3-2026-12l, written out since it changed)
    "counter_offset": COUNTER_OFFSET, "mixer_init": 6000, "apm_match": True,
}  # fmt: skip
PRESETS["l3-2026-12g+external"] = {**PRESETS["l3-2026-12g"], "external_input": True}
# a fourth APM by which of the last bits were mispredicted, and the extra weight sets at
# 10/16 of the mixer's rate (whole corpus files, cm alone: 522,830 -> 520,350 bytes)
PRESETS["l3-2026-12h"] = {
    **PRESETS["l3-2026-12g"], "apm_miss": True, "mixer_extra_rate": MIXER_EXTRA_RATE,
}  # fmt: skip
PRESETS["l3-2026-12h+external"] = {**PRESETS["l3-2026-12h"], "external_input": True}
# tmplnext: the field that followed, last time, the value this field of the same log
# statement had then (line numbers, module and test names printed again in order)
PRESETS["l3-2026-12i"] = {
    **PRESETS["l3-2026-12h"], "contexts": PRESETS["l3-2026-12h"]["contexts"] + ["tmplnext"],
}  # fmt: skip
PRESETS["l3-2026-12i+external"] = {**PRESETS["l3-2026-12i"], "external_input": True}
# paq8px's word model in four contexts: case-folded words with the gaps between them, the
# word with the 1 KiB block it is in, the last four bytes as letter classes; word and
# field, which they make redundant, go (whole corpus files, cm alone: 515,606 -> 507,316
# bytes, -1.6%)
PRESETS["l3-2026-12j"] = {
    **PRESETS["l3-2026-12i"],
    "contexts": [c for c in PRESETS["l3-2026-12i"]["contexts"] if c not in ("word", "field")]
    + list(TEXT_CONTEXTS),
}  # fmt: skip
PRESETS["l3-2026-12j+external"] = {**PRESETS["l3-2026-12j"], "external_input": True}
# paq8px's keyword0 (the last word before a ':' or '=', with the word and the last byte)
# and tmplnext by the field's last two values (whole corpus files, cm alone: 507,316 ->
# 505,510 bytes, -0.36%; each alone 506,306 and 506,550)
PRESETS["l3-2026-12k"] = {
    **PRESETS["l3-2026-12j"],
    "contexts": PRESETS["l3-2026-12j"]["contexts"] + ["keyword", "tmplnext2"],
}  # fmt: skip
PRESETS["l3-2026-12k+external"] = {**PRESETS["l3-2026-12k"], "external_input": True}
# column and above2 left out (the byte above is in fieldabove and tmplabove, field by
# field) and the weights' start at 4000: first 256 KiB of every corpus file, cm alone,
# 393,522 -> 392,230 bytes; whole files 505,510 -> 504,686 (-0.16%), two contexts fewer
PRESETS["l3-2026-12l"] = {
    **PRESETS["l3-2026-12k"],
    "contexts": [c for c in PRESETS["l3-2026-12k"]["contexts"] if c not in ("column", "above2")],
    "mixer_init": MIXER_INIT,
}  # fmt: skip
PRESETS["l3-2026-12l+external"] = {**PRESETS["l3-2026-12l"], "external_input": True}
# paq8px's match context with the last three bytes (its mapL) in matchbyte's place, and its
# word0, c1, word2 (first 256 KiB of every corpus file, cm alone: 392,230 -> 390,588
# bytes; whole files 504,686 -> 502,208, -0.49%; matchbyte3 alone 391,500 and 503,486)
PRESETS["l3-2026-12m"] = {
    **PRESETS["l3-2026-12l"],
    "contexts": [c for c in PRESETS["l3-2026-12l"]["contexts"] if c != "matchbyte"]
    + ["matchbyte3", "wordskip"],
}  # fmt: skip
PRESETS["l3-2026-12m+external"] = {**PRESETS["l3-2026-12m"], "external_input": True}
# headabove: which kind of line came before decides much of how a line begins (after
# maven's "[INFO] --- maven-resources-plugin..." comes "[INFO] Using 'UTF-8'..." 152 times
# in 168; juliac_789/fail.log's "U" there cost 1.42 bits, 0.24 with it, paq8px -8 0.41).
# Whole corpus files, cm alone: 502,208 -> 501,462 bytes (-0.15%; heads of 40, 64, 76, 96
# and 128 bytes: 501,732, 501,524, 501,580, 501,726, 502,002); first 256 KiB of every
# file 390,588 -> 390,302
PRESETS["l3-2026-12n"] = {
    **PRESETS["l3-2026-12m"],
    "contexts": PRESETS["l3-2026-12m"]["contexts"] + ["headabove"],
}  # fmt: skip
PRESETS["l3-2026-12n+external"] = {**PRESETS["l3-2026-12n"], "external_input": True}
# blankpos in linepos's place (javac's caret lines, blanks mirroring the tabs above:
# astor_1278/pass.log 23,968 -> 23,688 bytes) and the final probability clipped to
# [1, 65534] instead of [4, 65531]. Whole corpus files, cm alone: 501,462 -> 500,860 bytes
# (-0.12%; kafka 77,612, loghub 113,690, ci-logs 309,558); on an experimental build,
# blankpos alone 501,188, the clip alone ([1, 65535]) 501,102
PRESETS["l3-2026-12o"] = {
    **PRESETS["l3-2026-12n"],
    "contexts": [c for c in PRESETS["l3-2026-12n"]["contexts"] if c != "linepos"]
    + ["blankpos"],
    "final_min": 1,
}  # fmt: skip
PRESETS["l3-2026-12o+external"] = {**PRESETS["l3-2026-12o"], "external_input": True}
