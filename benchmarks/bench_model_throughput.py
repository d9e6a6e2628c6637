"""Whole-archive throughput of a model on a corpus: tinyzip.compress / decompress per file.

    python benchmarks/bench_model_throughput.py --model CKPT.tzm [--model cm ...]
        [--adapt none|fast|max] [--repeats 3] [--threads 2] [--fresh] [--no-disk-cache] [--json OUT] [--md OUT] PATHS...

Each file is compressed alone (the CLI's default streams and frame size), decompressed and
checked; a run's KB/s is the corpus bytes over the summed wall-clock seconds of that
direction. The figure is the median over ``--repeats`` runs, with the per-run rates, the
process CPU seconds and the load average before and after, so a reader can tell a quiet
run from a loaded one. This is the issue #5 / #8 measurement of "compress and decompress
KB/s on 2 cores": run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    return [f for f in out if f.name != "SOURCE.txt"]


def _run(model: str, adapt: str | None, files: list[Path], fresh: bool) -> dict[str, float]:
    # fresh: what a process per file pays, cm learning the primer anew every time
    import tinyzip
    from tinyzip.model.cm_transformer import forget_primed_states

    raw = packed = 0
    times = {"compress": 0.0, "decompress": 0.0}
    cpus = {"compress": 0.0, "decompress": 0.0}
    for f in files:
        data = f.read_bytes()
        if fresh:
            forget_primed_states()
        t, c = time.perf_counter(), time.process_time()
        blob = tinyzip.compress(data, model, adapt=adapt)
        times["compress"] += time.perf_counter() - t
        cpus["compress"] += time.process_time() - c
        if fresh:
            forget_primed_states()
        t, c = time.perf_counter(), time.process_time()
        back = tinyzip.decompress(blob, model)
        times["decompress"] += time.perf_counter() - t
        cpus["decompress"] += time.process_time() - c
        if back != data:
            raise SystemExit(f"round trip failed: {f}")
        raw += len(data)
        packed += len(blob)
    return {
        "bytes": raw, "archive_bytes": packed, "bpb": 8 * packed / raw,
        "compress_kbps": raw / times["compress"] / 1e3,
        "decompress_kbps": raw / times["decompress"] / 1e3,
        "compress_cpu_s": cpus["compress"], "decompress_cpu_s": cpus["decompress"],
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--adapt", choices=("none", "fast", "max"), default=None,
                   help="tinyzip's --adapt for every model (default: each model's own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS for the engine")
    p.add_argument("--fresh", action="store_true",
                   help="every archive starts without the state the process kept after the "
                        "model's primer, as a process per file does: it loads it from the disk "
                        "cache (model/primed_cache.py), or learns it with --no-disk-cache "
                        "(default: the process keeps it once learned twice)")
    p.add_argument("--no-disk-cache", action="store_true",
                   help="TINYZIP_CACHE_DIR=off: no primed state from disk, as on a machine's "
                        "first archive")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.no_disk_cache:
        os.environ["TINYZIP_CACHE_DIR"] = "off"
    files = _files(args.paths)
    rows = []
    for model in args.model:
        load_before = os.getloadavg()[0]
        runs = [_run(model, args.adapt, files, args.fresh) for _ in range(args.repeats)]
        row = {
            "model": model, "adapt": args.adapt, "files": len(files), "bytes": runs[0]["bytes"],
            "bpb": runs[0]["bpb"], "threads": args.threads, "fresh": args.fresh,
            "disk_cache": not args.no_disk_cache,
            "compress_kbps": statistics.median(r["compress_kbps"] for r in runs),
            "decompress_kbps": statistics.median(r["decompress_kbps"] for r in runs),
            "runs": runs, "load_before": load_before, "load_after": os.getloadavg()[0],
        }  # fmt: skip
        rows.append(row)
        print(f"{model} (adapt {args.adapt or 'default'}): {row['bpb']:.4f} bpb, compress {row['compress_kbps']:.1f} KB/s, "
              f"decompress {row['decompress_kbps']:.1f} KB/s (median of {args.repeats}; "
              f"load {load_before:.2f} -> {row['load_after']:.2f})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.md:
        lines = ["| model | adapt | files | bytes | bpb | compress KB/s | decompress KB/s | per run (c / d) | load |",
                 "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for r in rows:
            per = ", ".join(f"{x['compress_kbps']:.1f} / {x['decompress_kbps']:.1f}" for x in r["runs"])
            name = r["model"]
            if r["fresh"]:  # (rows from before the disk cache have no "disk_cache")
                name += (" (--fresh: the primer's state from the disk cache per archive)"
                         if r.get("disk_cache") else " (--fresh: the primer learned anew per archive)")
            lines.append(f"| {name} | {r['adapt'] or 'default'} | {r['files']} | {r['bytes']:,} | {r['bpb']:.4f} | "
                         f"{r['compress_kbps']:.1f} | {r['decompress_kbps']:.1f} | {per} | "
                         f"{r['load_before']:.2f} -> {r['load_after']:.2f} |")
        Path(args.md).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
