"""Peak memory of `tinyzip` streaming a large input through stdin/stdout.

Builds N MiB of log text from the corpus (files concatenated and repeated, each pass
with a pass number stamped into every line so that no two passes are identical), pipes
it through `python -m tinyzip` and back, and reports the peak RSS of each process
(ru_maxrss of the child) and the round trip. Memory must not grow with the input: the
container holds one frame at a time.

    python benchmarks/bench_memory.py --mib 100 --model zstd
    python benchmarks/bench_memory.py --mib 4 --model cm
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _make_input(path: Path, n_bytes: int) -> str:
    sources = sorted(p for p in (CORPUS / "loghub").glob("*.log"))
    digest = hashlib.sha256()
    written = 0
    with open(path, "wb") as out:
        rep = 0
        while written < n_bytes:
            for src in sources:
                for line in src.read_bytes().splitlines(keepends=True):
                    chunk = b"%d " % rep + line
                    chunk = chunk[: n_bytes - written]
                    out.write(chunk)
                    digest.update(chunk)
                    written += len(chunk)
                    if written >= n_bytes:
                        return digest.hexdigest()
            rep += 1
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--model", default="zstd")
    args = parser.parse_args(argv)
    n_bytes = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        raw, packed, back = Path(tmp, "in.log"), Path(tmp, "in.tzp"), Path(tmp, "out.log")
        want = _make_input(raw, n_bytes)
        results = {}
        for step, src, dst, flags in [
            ("compress", raw, packed, ["-m", args.model]),
            ("decompress", packed, back, ["-d"]),
        ]:
            # A fresh measuring process per step, so ru_maxrss is that step's child alone.
            code = (
                "import resource, subprocess, sys, time;"
                f"t=time.perf_counter();"
                f"subprocess.run([sys.executable,'-m','tinyzip',*{flags!r}],"
                f"stdin=open({str(src)!r},'rb'),stdout=open({str(dst)!r},'wb'),check=True);"
                "print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss*1024)"
            )
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            wall, peak = out.stdout.split()
            results[step] = {"seconds": float(wall), "peak_rss_bytes": int(peak),
                             "kbps": n_bytes / float(wall) / 1e3}
        got = hashlib.sha256(back.read_bytes()).hexdigest()
        summary = {
            "input_bytes": n_bytes,
            "archive_bytes": packed.stat().st_size,
            "model": args.model,
            "roundtrip": got == want,
            **results,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    name = RESULTS / f"memory_{args.model.replace(':', '-')}_{args.mib}MiB.json"
    name.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["roundtrip"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
