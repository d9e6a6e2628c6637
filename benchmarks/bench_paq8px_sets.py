"""paq8px -8 and xz -9e on whole corpus sets, every file compressed alone (issues #6, #8).

The paq8px column of the held-out tables (`heldout_default_twins.md`): paq8px learns
nothing beforehand, so every set is "held out" for it. It runs at about 9 KB/s on one
core, so this runs several files at once (``--jobs``) and, by default, only compresses:
its round trips were checked on the samples of `run_bench_paq8px.sh`; ``--verify``
decompresses every file too (twice the time). paq8px must be on PATH (docs/bench.md,
"paq8px baseline"); each run takes about 2.2 GB of memory at -8.

    python benchmarks/bench_paq8px_sets.py --jobs 2 --json benchmarks/results/paq8px_sets.json \\
        --md benchmarks/results/paq8px_sets.md ../shared/corpus/kafka ../shared/corpus/loghub \\
        ../shared/corpus/ci-logs
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_cm_transformer import files_of  # the same file list as the held-out benchmarks


def paq8px_bytes(path: Path, verify: bool) -> tuple[int, float]:
    """Size of paq8px -8's archive of ``path`` and the seconds it took to compress."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a.paq8px"
        t = time.perf_counter()
        subprocess.run(["paq8px", "-8", str(path), str(out)], check=True, capture_output=True)
        seconds = time.perf_counter() - t
        if verify:
            back = Path(tmp) / "back"
            subprocess.run(["paq8px", "-d", str(out), str(back)], check=True, capture_output=True)
            if back.read_bytes() != path.read_bytes():
                raise RuntimeError(f"paq8px round trip failed on {path}")
        return out.stat().st_size, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", type=Path, help="corpus set folders")
    ap.add_argument("--jobs", type=int, default=2, help="paq8px runs at once (default 2)")
    ap.add_argument("--verify", action="store_true", help="decompress and compare every file")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--md", type=Path, help="write a Markdown table here")
    args = ap.parse_args(argv)
    if shutil.which("paq8px") is None:
        print("paq8px not on PATH (see docs/bench.md)", file=sys.stderr)
        return 2
    version = subprocess.run(["paq8px"], capture_output=True, text=True).stdout.splitlines()[0]
    rows: list[dict] = []
    for folder in args.sets:
        files = [p for p in files_of([str(folder)]) if p.stat().st_size]
        print(f"{folder.name}: {len(files)} files", file=sys.stderr, flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda p: paq8px_bytes(p, args.verify), files))
        for path, (size, seconds) in zip(files, results):
            raw = path.read_bytes()
            xz = len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
            rows.append({
                "set": folder.name, "file": str(path.relative_to(folder)), "bytes": len(raw),
                "paq8px -8": size, "xz -9e": xz, "paq8px_seconds": round(seconds, 2),
            })  # fmt: skip
    sets: dict[str, dict[str, int]] = {}
    for r in rows:
        s = sets.setdefault(r["set"], {"files": 0, "bytes": 0, "paq8px -8": 0, "xz -9e": 0})
        s["files"] += 1
        for k in ("bytes", "paq8px -8", "xz -9e"):
            s[k] += r[k]
    total = {k: sum(s[k] for s in sets.values()) for k in ("files", "bytes", "paq8px -8", "xz -9e")}
    lines = [
        f"{version}, `-8`, every file compressed alone (archive bytes, its headers included); "
        f"xz -9e by Python's lzma (preset 9 | extreme); round trips "
        f"{'verified' if args.verify else 'not checked here'}.",
        "",
        "| set | files | bytes | paq8px -8 | bpb | xz -9e | bpb | paq8px / xz |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in [*sets.items(), ("all", total)]:
        lines.append(
            f"| {name} | {s['files']} | {s['bytes']:,} | {s['paq8px -8']:,} | "
            f"{8 * s['paq8px -8'] / s['bytes']:.4f} | {s['xz -9e']:,} | "
            f"{8 * s['xz -9e'] / s['bytes']:.4f} | {s['paq8px -8'] / s['xz -9e']:.3f} |"
        )
    secs = sum(r["paq8px_seconds"] for r in rows)
    lines += ["", f"paq8px compressed {total['bytes'] / secs / 1000:.1f} KB/s per run ({args.jobs} at once on this machine)."]
    print("\n".join(lines))
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"version": version, "sets": sets, "total": total, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
