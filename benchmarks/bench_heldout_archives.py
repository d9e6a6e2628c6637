"""Archive bytes, headers included, of every file of a set compressed alone with a model.

    python benchmarks/bench_heldout_archives.py \
        kafka=runs/twin-no-kafka-24k/twin-no-kafka-24k-caa692b5.tzm \
        loghub=runs/twin-no-loghub-24k/twin-no-loghub-24k-5f7fa5ba.tzm \
        ci-logs=runs/twin-no-ci-logs-24k/twin-no-ci-logs-24k-961297f0.tzm

Each SET=MODEL compresses every non-empty file of ../shared/corpus/SET (SOURCE.txt
skipped) with `tinyzip.compress(data, model=MODEL)` at the default settings (512 KiB
frames, --adapt max) and sums the archive sizes beside xz -9e's: what a user gets, where
benchmarks/bench_cm_transformer.py reports payloads of one frame per file without the
headers. ``--roundtrip`` also decompresses every archive, checks it, and reports each
set's compress and decompress KB/s (wall clock of tinyzip.compress / decompress only).
"""

from __future__ import annotations

import argparse
import lzma
import time
from pathlib import Path

from bench_cm_transformer import files_of

import tinyzip

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pairs", nargs="+", metavar="SET=MODEL")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--roundtrip", action="store_true",
                    help="decompress and check every archive; report KB/s both ways")
    args = ap.parse_args(argv)
    total = {"raw": 0, "tinyzip": 0, "xz": 0}
    for pair in args.pairs:
        name, _, model = pair.partition("=")
        files = [p for p in files_of([str(args.corpus / name)]) if p.stat().st_size]
        row = {"raw": 0, "tinyzip": 0, "xz": 0}
        seconds = {"compress": 0.0, "decompress": 0.0}
        for path in files:
            raw = path.read_bytes()
            row["raw"] += len(raw)
            start = time.perf_counter()
            archive = tinyzip.compress(raw, model=model or None)
            seconds["compress"] += time.perf_counter() - start
            row["tinyzip"] += len(archive)
            if args.roundtrip:
                start = time.perf_counter()
                back = tinyzip.decompress(archive, model=model or None)
                seconds["decompress"] += time.perf_counter() - start
                if back != raw:
                    raise SystemExit(f"round trip failed: {path}")
            row["xz"] += len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        for k in total:
            total[k] += row[k]
        speed = ""
        if args.roundtrip:
            kbps = {k: row["raw"] / v / 1000 for k, v in seconds.items()}
            speed = f"; round trips checked, {kbps['compress']:.0f} / {kbps['decompress']:.0f} KB/s"
        print(f"{name}: {len(files)} files, {row['raw']:,} bytes; tinyzip {row['tinyzip']:,}, "
              f"xz -9e {row['xz']:,}: {row['tinyzip'] / row['xz']:.3f}x{speed}", flush=True)
    print(f"all: tinyzip {total['tinyzip']:,}, xz -9e {total['xz']:,}: "
          f"{total['tinyzip'] / total['xz']:.4f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
