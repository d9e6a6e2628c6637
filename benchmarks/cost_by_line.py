"""Where cm loses bits against paq8px: per-byte costs of both on one file, by kind of line.

cm's costs come from its predictor, bit by bit (about 4 minutes for 1.7 MB here). paq8px's
come from a dump its encoder writes when patched: in ``Encoder::compressByte``, add up
-log2 of each coded bit's probability (``p / 2**31`` for a 1, one minus that for a 0) over
the byte's 8 bits, and append it as one little-endian float32 to the file named by an
environment variable. paq8px codes a few header bytes per block of its own (5 per block
after 4 at the start, in v216); its console output lists the blocks (``[start - end]``),
which is how this script lines its dump up with the file (``--paq-log``).

    PAQ_COST=fail.f32 paq8px -8 fail.log fail.paq > fail.paqlog
    python benchmarks/cost_by_line.py fail.log --paq-cost fail.f32 --paq-log fail.paqlog

Lines are grouped by their first bytes with colour codes dropped and digit runs as ``#``;
the table (Markdown) lists the kinds where cm pays most over paq8px.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tinyzip.model.context_mix import PRESETS, ContextMixPredictor  # noqa: E402

ANSI = re.compile(rb"\x1b\[[0-9;]*m")
DIGITS = re.compile(rb"[0-9]+")


def cm_costs(raw: bytes, preset: str | None) -> np.ndarray:
    """Bits cm pays for each byte of raw, one stream (preset None: the default)."""
    pred = ContextMixPredictor(**PRESETS[preset]) if preset else ContextMixPredictor()
    pred.begin(1)
    cost = np.zeros(len(raw))
    y = np.zeros(1, dtype=np.int64)
    for k, b in enumerate(pred.to_symbols(raw)):
        table = pred.predict(1)
        cost[k >> 3] -= np.log2(table[0, b] / (table[0, 0] + table[0, 1]))
        y[0] = b
        pred.update(y)
    return cost


def paq_costs(dump: Path, log: Path, size: int, first: int, per_block: int) -> np.ndarray:
    """paq8px's dump lined up with the file: its block headers' bytes left out."""
    coded = np.fromfile(dump, dtype="<f4").astype(np.float64)
    text = log.read_bytes().decode("latin-1")
    blocks = sorted({(int(a), int(b)) for a, b in re.findall(r"\[(\d+) - (\d+)\]", text)})
    if sum(b - a + 1 for a, b in blocks) != size:
        raise SystemExit(f"{log}: its blocks do not cover the file's {size} bytes")
    if first + per_block * len(blocks) + size != len(coded):
        raise SystemExit(f"{dump}: {len(coded)} bytes coded, not {size} + the headers")
    out = np.zeros(size)
    at = first
    for a, b in blocks:
        at += per_block
        out[a : b + 1] = coded[at : at + b - a + 1]
        at += b - a + 1
    return out


def line_kinds(raw: bytes, width: int) -> list[tuple[int, int, bytes]]:
    """(start, length with the newline, kind) of every line."""
    out, pos = [], 0
    for line in raw.split(b"\n"):
        kind = DIGITS.sub(b"#", ANSI.sub(b"", line))[:width]
        out.append((pos, len(line) + 1, kind))
        pos += len(line) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", type=Path)
    ap.add_argument("--paq-cost", type=Path, required=True, help="paq8px's per-byte dump (float32)")
    ap.add_argument("--paq-log", type=Path, required=True, help="paq8px's console output")
    ap.add_argument("--preset", help="cm's parameters (default: the default level's)")
    ap.add_argument("--cm-cost", type=Path, help="cache of cm's costs (.npy): read if there, else written")
    ap.add_argument("--kinds", type=int, default=15, help="how many kinds of line to list")
    ap.add_argument("--width", type=int, default=22, help="bytes of a line that name its kind")
    ap.add_argument("--first", type=int, default=4, help="paq8px's header bytes before the first block")
    ap.add_argument("--per-block", type=int, default=5, help="... and before each block")
    args = ap.parse_args()
    raw = args.file.read_bytes()
    if args.cm_cost and args.cm_cost.exists():
        ours = np.load(args.cm_cost)
    else:
        ours = cm_costs(raw, args.preset)
        if args.cm_cost:
            np.save(args.cm_cost, ours)
    if len(ours) != len(raw):
        raise SystemExit(f"{args.cm_cost}: {len(ours)} costs for {len(raw)} bytes")
    paq = paq_costs(args.paq_cost, args.paq_log, len(raw), args.first, args.per_block)
    print(f"{args.file}: {len(raw):,} bytes; cm ({args.preset or 'default'}) {ours.sum() / 8:,.0f} bytes, "
          f"paq8px {paq.sum() / 8:,.0f} bytes (correlation of the per-byte costs "
          f"{np.corrcoef(ours, paq)[0, 1]:.2f})\n")  # fmt: skip
    agg: dict[bytes, list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    example: dict[bytes, bytes] = {}
    for start, n, kind in line_kinds(raw, args.width):
        a = agg[kind]
        a[0] += 1
        a[1] += n
        a[2] += ours[start : start + n].sum()
        a[3] += paq[start : start + n].sum()
        example.setdefault(kind, raw[start : start + n - 1])
    print("| cm - paq8px (bytes) | cm | paq8px | lines | bytes | a line of the kind |")
    print("|---:|---:|---:|---:|---:|---|")
    worst = sorted(agg, key=lambda k: agg[k][3] - agg[k][2])[: args.kinds]
    for kind in worst:
        lines, size, o, p = agg[kind]
        shown = ANSI.sub(b"", example[kind])[:70].decode("latin-1").replace("|", "\\|")
        print(f"| {(o - p) / 8:,.0f} | {o / 8:,.0f} | {p / 8:,.0f} | {lines:,} | {size:,} | `{shown}` |")


if __name__ == "__main__":
    main()
