"""Archive benchmark: real .tzp files of a model on corpus files, beside gzip -9 and xz -9e.

Every file is compressed alone through the public API and the round trip is verified.
Reports bits per byte (whole archive, headers included) and compress/decompress KB/s,
per file and in total, as JSON and Markdown under benchmarks/results/.

    python benchmarks/bench_archive.py ../shared/corpus/loghub --model cm --name archive_cm_loghub
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import time
from pathlib import Path

import tinyzip

RESULTS = Path(__file__).resolve().parent / "results"


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.name != "SOURCE.txt")
        else:
            out.append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--model", default=None, help="model for tinyzip (default: tinyzip's default)")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--max-bytes", type=int, default=0, help="use only the first N bytes of each file")
    parser.add_argument("--name", default="archive", help="result file stem under benchmarks/results/")
    args = parser.parse_args(argv)

    rows = []
    for path in _files(args.paths):
        data = path.read_bytes()
        if args.max_bytes:
            data = data[: args.max_bytes]
        if not data:
            continue
        t0 = time.perf_counter()
        blob = tinyzip.compress(data, model=args.model, streams=args.streams)
        t1 = time.perf_counter()
        ok = tinyzip.decompress(blob, model=args.model) == data
        t2 = time.perf_counter()
        gz = gzip.compress(data, compresslevel=9)
        xz = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
        row = {
            "file": str(path),
            "raw_bytes": len(data),
            "tinyzip_bytes": len(blob),
            "tinyzip_bpb": 8 * len(blob) / len(data),
            "gzip9_bpb": 8 * len(gz) / len(data),
            "xz9e_bpb": 8 * len(xz) / len(data),
            "compress_kbps": len(data) / (t1 - t0) / 1e3,
            "decompress_kbps": len(data) / (t2 - t1) / 1e3,
            "roundtrip": ok,
        }
        rows.append(row)
        print(
            f"{path.name:<28} {len(data):>9} {row['tinyzip_bpb']:6.3f} {row['gzip9_bpb']:6.3f} "
            f"{row['xz9e_bpb']:6.3f} {row['compress_kbps']:7.1f} {row['decompress_kbps']:7.1f} "
            f"{'ok' if ok else 'FAILED'}",
            flush=True,
        )
    raw = sum(r["raw_bytes"] for r in rows)
    total = {
        "raw_bytes": raw,
        "tinyzip_bpb": 8 * sum(r["tinyzip_bytes"] for r in rows) / raw,
        "gzip9_bpb": sum(r["gzip9_bpb"] * r["raw_bytes"] for r in rows) / raw,
        "xz9e_bpb": sum(r["xz9e_bpb"] * r["raw_bytes"] for r in rows) / raw,
        "compress_kbps": raw / sum(r["raw_bytes"] / r["compress_kbps"] for r in rows),
        "decompress_kbps": raw / sum(r["raw_bytes"] / r["decompress_kbps"] for r in rows),
        "roundtrip": all(r["roundtrip"] for r in rows),
    }
    print(f"{'TOTAL':<28} {raw:>9} {total['tinyzip_bpb']:6.3f} {total['gzip9_bpb']:6.3f} "
          f"{total['xz9e_bpb']:6.3f} {total['compress_kbps']:7.1f} {total['decompress_kbps']:7.1f}")
    meta = {
        "model": args.model or "default",
        "streams": args.streams,
        "max_bytes": args.max_bytes,
        "machine": f"{platform.machine()} {platform.processor()}, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "files": rows, "total": total}, indent=2) + "\n"
    )
    lines = [
        f"# {args.name}: tinyzip ({meta['model']}) vs gzip -9 and xz -9e, each file alone",
        "",
        f"{meta['date']}, {meta['machine']}; bits per byte of the whole archive (headers included).",
        "",
        "| file | bytes | tinyzip bpb | gzip -9 bpb | xz -9e bpb | compress KB/s | decompress KB/s | round trip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows + [dict(total, file="total")]:
        lines.append(
            f"| {Path(r['file']).name} | {r['raw_bytes']} | {r['tinyzip_bpb']:.3f} | "
            f"{r['gzip9_bpb']:.3f} | {r['xz9e_bpb']:.3f} | {r['compress_kbps']:.1f} | "
            f"{r['decompress_kbps']:.1f} | {'ok' if r['roundtrip'] else 'FAILED'} |"
        )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    return 0 if total["roundtrip"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
