"""Ablation: transformer alone, cm alone, cm + transformer, beside xz -9e, each file alone.

    python benchmarks/bench_cm_transformer.py --model runs/x/x.tzm FILE_OR_DIR... \
        [--tail 0.05] [--max-bytes 131072] [--md out.md] [--json out.json]

Payload bytes of each mode come from the predictors' own frame encoders (one frame, one
stream per file: what an archive of that file holds, without the header); the archive
round trip of every mode is checked on the first file, which also gives decode speeds.
``--tail F`` takes the last fraction F of each file (the validation split of a model
trained with the project's pipeline), ``--max-bytes`` the first N bytes (after --tail).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from tinyzip.model.checkpoint import load_checkpoint
from tinyzip.model.cm_transformer import CmTransformerPredictor
from tinyzip.model.context_mix import ContextMixPredictor
from tinyzip.model.transformer_predictor import TransformerPredictor

import tinyzip

MODES = ("transformer", "cm", "cm+transformer")


def files_of(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        found = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        out += [q for q in found if q.name != "SOURCE.txt"]
    return out


def payload_bytes(pred: object, raw: bytes) -> int:
    # what an archive does first (cm+transformer learns its primer, scaled to the input)
    pred.expect_size(len(raw))  # type: ignore[attr-defined]
    pred.reset()  # type: ignore[attr-defined]
    symbols = pred.to_symbols(raw)  # type: ignore[attr-defined]
    grid = symbols.astype(np.uint8 if pred.n_symbols <= 256 else np.uint16)[None, :]  # type: ignore[attr-defined]
    payloads = pred.encode_frame(grid, np.array([grid.shape[1]]))  # type: ignore[attr-defined]
    if payloads is None:
        raise SystemExit("the compiled kernels are needed (pip install -e . with a C compiler)")
    return sum(map(len, payloads))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--model", required=True, help="byte-level .tzm checkpoint")
    ap.add_argument("--tail", type=float, default=0.0)
    ap.add_argument("--max-bytes", type=int, default=0)
    ap.add_argument("--label", default="", help="what the model saw, for the report")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--md")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    modes = tuple(m for m in MODES if m in args.modes.split(","))

    ckpt = load_checkpoint(args.model)
    makers = {
        "transformer": lambda: TransformerPredictor(ckpt),
        "cm": ContextMixPredictor,
        "cm+transformer": lambda: CmTransformerPredictor(ckpt),
    }
    rows, total = [], {m: 0 for m in (*modes, "xz -9e", "raw")}
    seconds = {m: 0.0 for m in modes}
    first: bytes | None = None
    for path in files_of(args.paths):
        raw = path.read_bytes()
        if args.tail:
            raw = raw[int(len(raw) * (1 - args.tail)) :]
        if args.max_bytes:
            raw = raw[: args.max_bytes]
        if not raw:
            continue
        first = first or raw
        row: dict[str, object] = {"file": str(path), "bytes": len(raw)}
        for mode in modes:
            t = time.perf_counter()
            n = payload_bytes(makers[mode](), raw)
            seconds[mode] += time.perf_counter() - t
            row[mode] = n
            total[mode] += n
        xz = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        row["xz -9e"] = xz
        total["xz -9e"] += xz
        total["raw"] += len(raw)
        rows.append(row)
        print(f"{path.name[:40]:40s} {len(raw):9d} " + " ".join(
            f"{m} {int(row[m]) * 8 / len(raw):.4f}" for m in (*modes, "xz -9e")), flush=True)  # type: ignore[call-overload]

    # Archive round trips of each mode on the first file: correctness and decode speed.
    decode = {}
    assert first is not None, "no input bytes"
    sample = first[:65536]
    for mode, spec in (("cm", "cm"), ("cm+transformer", f"cm+{args.model}"),
                       ("transformer", args.model)):  # fmt: skip
        if mode not in modes:
            continue
        blob = tinyzip.compress(sample, model=spec)
        t = time.perf_counter()
        ok = tinyzip.decompress(blob, model=args.model if mode != "cm" else None) == sample
        decode[mode] = {"kB_per_s": round(len(sample) / (time.perf_counter() - t) / 1e3, 1),
                        "roundtrip": ok, "bytes": len(sample)}  # fmt: skip

    raw_total = total["raw"]
    summary = {
        "model": args.model, "model_bytes": os.path.getsize(args.model), "label": args.label,
        "tail": args.tail, "max_bytes": args.max_bytes, "files": len(rows), "raw_bytes": raw_total,
        "bpb": {m: round(total[m] * 8 / raw_total, 4) for m in (*modes, "xz -9e")},
        "vs_xz": {m: round(total[m] / total["xz -9e"], 3) for m in modes},
        "encode_kB_per_s": {m: round(raw_total / seconds[m] / 1e3, 1) for m in modes},
        "decode": decode,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1min": round(os.getloadavg()[0], 2)},
        "rows": rows,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    if args.md:
        lines = [
            f"Model `{Path(args.model).name}` ({summary['model_bytes']:,} bytes); {args.label}",
            f"{len(rows)} files, {raw_total:,} bytes"
            + (f" (last {args.tail:.0%} of each)" if args.tail else "")
            + (f" (first {args.max_bytes:,} bytes of each)" if args.max_bytes else "")
            + f", each compressed alone; load average {summary['machine']['load_avg_1min']}.",
            "",
            "| mode | payload bpb | x xz -9e | encode KB/s | decode KB/s (first file, 64 KB) |",
            "|---|---|---|---|---|",
        ]
        for m in modes:
            lines.append(f"| {m} | {summary['bpb'][m]} | {summary['vs_xz'][m]} | "
                         f"{summary['encode_kB_per_s'][m]} | {decode[m]['kB_per_s']} |")  # fmt: skip
        lines.append(f"| xz -9e | {summary['bpb']['xz -9e']} | 1 | | |")
        Path(args.md).write_text("\n".join(lines) + "\n")
    return 0 if all(d["roundtrip"] for d in decode.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
