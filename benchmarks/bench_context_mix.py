"""Ideal code length and speed of the context-mixing predictor on the loghub samples.

For each file: cut into B contiguous chunks (the streams of one frame), run the lockstep
protocol, and sum -log2(p_true) over every bit from the integer tables (floats are fine
here: this is a measurement, not the codec). Beside it, xz -9e and gzip -9 of the same
file (python lzma / gzip). Writes benchmarks/results/context_mix.json.

    python benchmarks/bench_context_mix.py                       # all loghub files, B=64
    python benchmarks/bench_context_mix.py --streams 16 --limit 65536 FILE...
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tinyzip.model.context_mix import ContextMixPredictor

CORPUS = Path("/work/shared/corpus/loghub")
RESULTS = Path(__file__).resolve().parent / "results" / "context_mix.json"


def split_streams(data: bytes, n_streams: int) -> list[bytes]:
    """Contiguous chunks, longest first (the lockstep protocol wants a prefix of actives)."""
    n = max(1, min(n_streams, len(data)))
    size = -(-len(data) // n)
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return sorted(chunks, key=len, reverse=True)


def ideal_bits(
    pred: ContextMixPredictor, data: bytes, n_streams: int
) -> tuple[float, float, float]:
    """(total ideal code length in bits, wall and CPU seconds of the whole loop).

    CPU seconds (process time) are the fairer speed figure on a shared machine.
    """
    chunks = split_streams(data, n_streams)
    syms = [pred.to_symbols(c) for c in chunks]
    lens = np.array([len(s) for s in syms])
    max_len = int(lens.max()) if len(lens) else 0
    mat = np.zeros((len(syms), max_len), dtype=np.int64)
    for i, s in enumerate(syms):
        mat[i, : len(s)] = s
    pred.begin(len(syms))
    total = 0.0
    full = 1 << pred.freq_bits
    t0, c0 = time.perf_counter(), time.process_time()
    for t in range(max_len):
        n = int(np.count_nonzero(lens > t))
        tab = pred.predict(n)
        y = mat[:n, t]
        total -= float(np.log2(tab[np.arange(n), y] / full).sum())
        pred.update(y)
    return total, time.perf_counter() - t0, time.process_time() - c0


def speed_probe(path: Path, n_bytes: int, streams: tuple[int, ...]) -> list[dict[str, Any]]:
    """KB/s of input bytes at several B on the first n_bytes of one file."""
    data = path.read_bytes()[:n_bytes]
    out = []
    for b in streams:
        bits, wall, cpu = ideal_bits(ContextMixPredictor(), data, b)
        out.append(
            {
                "file": path.name,
                "bytes": len(data),
                "streams": b,
                "bpb": bits / len(data),
                "kb_per_s_wall": len(data) / 1000 / wall,
                "kb_per_s_cpu": len(data) / 1000 / cpu,
            }
        )
        print(
            f"speed B={b:3d}: {out[-1]['kb_per_s_cpu']:.1f} KB/s cpu, "
            f"{out[-1]['kb_per_s_wall']:.1f} KB/s wall ({len(data)} B of {path.name})",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--streams", "-B", type=int, default=64)
    ap.add_argument("--level", type=int, default=None)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N bytes of a file")
    ap.add_argument("--param", action="append", default=[], help="NAME=INT predictor parameter")
    ap.add_argument("--out", type=Path, default=None, help=f"JSON output (default {RESULTS})")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument(
        "--probe-bytes", type=int, default=32768, help="speed probe size at B=16/64 (0: skip)"
    )
    args = ap.parse_args(argv)
    files = args.files or sorted(CORPUS.glob("*.log"))
    params: dict[str, Any] = {}
    for kv in args.param:
        k, v = kv.split("=", 1)
        params[k] = int(v)
    rows = []
    tot = {"bytes": 0, "cm_bits": 0.0, "xz": 0, "gz": 0, "seconds": 0.0, "cpu": 0.0}
    for f in files:
        data = f.read_bytes()
        if args.limit:
            data = data[: args.limit]
        pred = ContextMixPredictor(level=args.level, **params)
        bits, secs, cpu = ideal_bits(pred, data, args.streams)
        xz = len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
        gz = len(gzip.compress(data, compresslevel=9))
        n = len(data)
        row = {
            "file": f.name,
            "bytes": n,
            "cm_bpb": bits / n,
            "xz9e_bpb": 8 * xz / n,
            "gzip9_bpb": 8 * gz / n,
            "kb_per_s_wall": n / 1000 / secs,
            "kb_per_s_cpu": n / 1000 / cpu,
        }
        rows.append(row)
        for k, val in (
            ("bytes", n),
            ("cm_bits", bits),
            ("xz", xz),
            ("gz", gz),
            ("seconds", secs),
            ("cpu", cpu),
        ):
            tot[k] += val
        print(
            f"{f.name:22s} {n:8d} B  cm {row['cm_bpb']:.4f}  xz {row['xz9e_bpb']:.4f}  "
            f"gzip {row['gzip9_bpb']:.4f} bpb  {row['kb_per_s_cpu']:.1f} KB/s cpu",
            flush=True,
        )
    nb = tot["bytes"]
    total = {
        "bytes": nb,
        "cm_bpb": tot["cm_bits"] / nb,
        "xz9e_bpb": 8 * tot["xz"] / nb,
        "gzip9_bpb": 8 * tot["gz"] / nb,
        "kb_per_s_wall": nb / 1000 / tot["seconds"],
        "kb_per_s_cpu": nb / 1000 / tot["cpu"],
    }
    print(
        f"{'TOTAL':22s} {nb:8d} B  cm {total['cm_bpb']:.4f}  xz {total['xz9e_bpb']:.4f}  "
        f"gzip {total['gzip9_bpb']:.4f} bpb  {total['kb_per_s_cpu']:.1f} KB/s cpu"
    )
    probe = speed_probe(files[0], args.probe_bytes, (16, 64)) if args.probe_bytes else []
    if not args.no_save:
        out = args.out or RESULTS
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "command": "python benchmarks/bench_context_mix.py " + " ".join(sys.argv[1:]),
            "streams": args.streams,
            "descriptor": ContextMixPredictor(level=args.level, **params).descriptor(),
            "machine": f"{platform.machine()} {platform.python_version()} numpy {np.__version__}",
            "note": "cm_bpb is the ideal code length from the integer tables; "
            "xz/gzip are real compressed sizes; kb_per_s_* is input bytes per second "
            "of the predict+update loop (one thread, all streams together), by wall "
            "clock and by process CPU time (the machine is shared)",
            "files": rows,
            "total": total,
            "speed_probe": probe,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
