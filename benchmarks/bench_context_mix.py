"""Ideal code length and speed of the context-mixing predictor on the loghub samples.

For each file: cut into B contiguous chunks (the streams of one frame), run the lockstep
protocol, and sum -log2(p_true) over every bit from the integer tables (floats are fine
here: this is a measurement, not the codec). Beside it, xz -9e and gzip -9 of the same
file (python lzma / gzip). Writes benchmarks/results/context_mix.json.

    python benchmarks/bench_context_mix.py                       # all loghub files, B=64
    python benchmarks/bench_context_mix.py --streams 16 --limit 65536 FILE...
    python benchmarks/bench_context_mix.py --kernel-vs-numpy 262144 --probe-bytes 131072 FILE
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


def speed_probe(
    path: Path, n_bytes: int, streams: tuple[int, ...], *, compiled: bool | None = None
) -> list[dict[str, Any]]:
    """KB/s of input bytes at several B on the first n_bytes of one file."""
    data = path.read_bytes()[:n_bytes]
    out = []
    for b in streams:
        pred = ContextMixPredictor(compiled=compiled)
        bits, wall, cpu = ideal_bits(pred, data, b)
        out.append(
            {
                "file": path.name,
                "bytes": len(data),
                "streams": b,
                "path": "C kernel" if pred.compiled else "numpy",
                "bpb": bits / len(data),
                "kb_per_s_wall": len(data) / 1000 / wall,
                "kb_per_s_cpu": len(data) / 1000 / cpu,
            }
        )
        print(
            f"speed B={b:3d} {out[-1]['path']}: {out[-1]['kb_per_s_cpu']:.1f} KB/s cpu, "
            f"{out[-1]['kb_per_s_wall']:.1f} KB/s wall ({len(data)} B of {path.name})",
            flush=True,
        )
    return out


def _archive_speed(data: bytes, *, pure_numpy: bool) -> dict[str, Any]:
    """tinyzip.compress / decompress KB/s with model cm, and where the time goes (cProfile)."""
    import cProfile
    import hashlib
    import os
    import pstats

    import tinyzip

    old = os.environ.get("TINYZIP_PURE_NUMPY")
    os.environ["TINYZIP_PURE_NUMPY"] = "1" if pure_numpy else "0"
    try:
        row: dict[str, Any] = {"path": "numpy" if pure_numpy else "C kernel", "bytes": len(data)}
        t0, c0 = time.perf_counter(), time.process_time()
        blob = tinyzip.compress(data, model="cm")
        row["compress_kb_per_s_wall"] = len(data) / 1000 / (time.perf_counter() - t0)
        row["compress_kb_per_s_cpu"] = len(data) / 1000 / (time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        back = tinyzip.decompress(blob)
        row["decompress_kb_per_s_wall"] = len(data) / 1000 / (time.perf_counter() - t0)
        row["decompress_kb_per_s_cpu"] = len(data) / 1000 / (time.process_time() - c0)
        assert back == data, "round trip failed"
        row["archive_bytes"] = len(blob)
        row["archive_sha256"] = hashlib.sha256(blob).hexdigest()
        if not pure_numpy:  # per-function seconds of one more run of each, under cProfile
            for what, call in (
                ("compress", lambda: tinyzip.compress(data, model="cm")),
                ("decompress", lambda: tinyzip.decompress(blob)),
            ):
                prof = cProfile.Profile()
                prof.runcall(call)
                st = pstats.Stats(prof).stats  # type: ignore[attr-defined]
                top = sorted(st.items(), key=lambda kv: -kv[1][2])[:8]
                row[f"{what}_profile_tottime_s"] = {
                    f"{Path(k[0]).name}:{k[2]}": round(v[2], 3) for k, v in top
                }
    finally:
        if old is None:
            del os.environ["TINYZIP_PURE_NUMPY"]
        else:
            os.environ["TINYZIP_PURE_NUMPY"] = old
    print(
        f"archive {row['path']}: compress {row['compress_kb_per_s_cpu']:.1f} KB/s cpu, "
        f"decompress {row['decompress_kb_per_s_cpu']:.1f} KB/s cpu, {len(blob)} B",
        flush=True,
    )
    return row


def predictor_only(path: Path, n_bytes: int, n_streams: int, compiled: bool) -> dict[str, Any]:
    """Microseconds per step in predict and in update alone (equal streams, columns ready)."""
    data = path.read_bytes()[:n_bytes]
    pred = ContextMixPredictor(compiled=compiled)
    size = len(data) // n_streams
    grid = pred.to_symbols(data[: size * n_streams]).reshape(n_streams, -1)
    cols = [np.ascontiguousarray(grid[:, t]) for t in range(grid.shape[1])]
    pred.begin(n_streams)
    t_pred = t_upd = 0.0
    for col in cols:
        t0 = time.perf_counter()
        pred.predict(n_streams)
        t1 = time.perf_counter()
        pred.update(col)
        t_pred += t1 - t0
        t_upd += time.perf_counter() - t1
    row = {
        "file": path.name,
        "bytes": size * n_streams,
        "streams": n_streams,
        "path": "C kernel" if compiled else "numpy",
        "us_per_step_predict": 1e6 * t_pred / len(cols),
        "us_per_step_update": 1e6 * t_upd / len(cols),
        "kb_per_s_wall": size * n_streams / 1000 / (t_pred + t_upd),
    }
    print(
        f"predictor only B={n_streams:3d} {row['path']}: predict {row['us_per_step_predict']:.1f} "
        f"us + update {row['us_per_step_update']:.1f} us per step, {row['kb_per_s_wall']:.1f} KB/s",
        flush=True,
    )
    return row


def kernel_vs_numpy(path: Path, probe_bytes: int, archive_bytes: int, out: Path) -> None:
    """Speed of the C kernel against the numpy reference; writes ``out`` (cm_kernel.json)."""
    probe = []
    for compiled in (True, False):
        probe += speed_probe(path, probe_bytes, (16, 64), compiled=compiled)
    alone = [
        predictor_only(path, probe_bytes, b, compiled)
        for compiled in (True, False)
        for b in (16, 64)
    ]
    data = path.read_bytes()[:archive_bytes]
    archive = [_archive_speed(data, pure_numpy=p) for p in (False, True)]
    assert archive[0]["archive_sha256"] == archive[1]["archive_sha256"], "archives differ"
    result = {
        "command": "python benchmarks/bench_context_mix.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.python_version()} numpy {np.__version__}",
        "note": "speed_probe: the predict+update loop of ideal_bits (one thread, all streams "
        "together), input KB/s; archive: tinyzip.compress/decompress with model cm, "
        "kernel vs TINYZIP_PURE_NUMPY=1 (identical archives); *_profile_tottime_s: "
        "seconds per function (tottime) of one more kernel run under cProfile; "
        "predictor_only: predict and update timed alone, without the probe's per-step "
        "bookkeeping (active count, log2 of the true symbol's probability)",
        "speed_probe": probe,
        "predictor_only": alone,
        "archive": archive,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


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
    ap.add_argument(
        "--kernel-vs-numpy",
        type=int,
        default=0,
        metavar="ARCHIVE_BYTES",
        help="compare the C kernel with the numpy path instead: speed probe at B=16/64 and "
        "tinyzip.compress/decompress of the first ARCHIVE_BYTES of the first file; writes "
        "results/cm_kernel.json",
    )
    args = ap.parse_args(argv)
    files = args.files or sorted(CORPUS.glob("*.log"))
    if args.kernel_vs_numpy:
        out = args.out or RESULTS.with_name("cm_kernel.json")
        kernel_vs_numpy(files[0], args.probe_bytes, args.kernel_vs_numpy, out)
        return 0
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
