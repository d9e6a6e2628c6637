"""Does online fine-tuning of the transformer's output bias pay beside cm? (issue #6)

    python benchmarks/bench_bias_finetune.py --model runs/x/x.tzm [--lr 0,0.01,0.03,0.1] FILE_OR_DIR...

For every file (compressed alone, one frame): the checkpoint's byte distributions from
the engine's parallel pass, then an output bias b (256 values) learned online while
coding, p'(x) ~ p(x) * exp(b[x]), b += lr * (onehot(byte) - p') after each byte (the
gradient of the byte's log-likelihood), and cm + transformer run on p'. Reported per
learning rate: the adapted transformer alone (ideal code length) and the cm +
transformer payload. lr 0 is the shipped path (its payload equals the archive's).

This is a float64 simulation to decide whether the idea is worth a fixed-point version
in encoder and decoder; it is not an archive format.
"""

from __future__ import annotations

import argparse
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from tinyzip.model.checkpoint import load_checkpoint
from tinyzip.model.cm_transformer import CmTransformerPredictor

BLOCK = 8192


def engine_tables(pred: CmTransformerPredictor, raw: bytes) -> np.ndarray:
    """(len(raw), 256) float64: the engine's table of each byte (as encode_frame gets them)."""
    data = np.frombuffer(raw, np.uint8).astype(np.int64)[None, :]
    out = [
        pred.block_tables(data, first, min(BLOCK, data.shape[1] - first))
        for first in range(0, data.shape[1], BLOCK)
    ]
    return np.concatenate(out, axis=1)[0].astype(np.float64)


def adapted_tables(tables: np.ndarray, raw: bytes, lr: float) -> tuple[np.ndarray, float]:
    """The bias-adapted distributions (as integer tables) and their code length in bits."""
    x = np.frombuffer(raw, np.uint8)
    bias = np.zeros(256)
    out = np.empty_like(tables)
    bits = 0.0
    for t in range(len(raw)):
        q = tables[t] / tables[t].sum() * np.exp(bias)
        q /= q.sum()
        out[t] = q
        bits -= np.log2(q[x[t]])
        grad = -q
        grad[x[t]] += 1.0
        bias += lr * grad
    return np.maximum(np.rint(out * (1 << 20)), 1).astype(np.int64)[None], bits


def one(job: tuple[str, str, tuple[float, ...]]) -> tuple[int, list[tuple[float, float, int]]]:
    path, model, rates = job
    raw = Path(path).read_bytes()
    tables = engine_tables(CmTransformerPredictor(load_checkpoint(model)), raw)
    rows = []
    for lr in rates:
        tabs, bits = adapted_tables(tables, raw, lr)
        pred = CmTransformerPredictor(load_checkpoint(model))
        grid = pred.to_symbols(raw).astype(np.uint8)[None, :]
        payloads = pred.cm.encode_frame(
            grid, np.array([grid.shape[1]]), external=lambda f, c: tabs[:, f : f + c],
            block_bytes=BLOCK,
        )  # fmt: skip
        rows.append((lr, bits, sum(map(len, payloads))))
    return len(raw), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--model", required=True, help="byte-level .tzm checkpoint")
    ap.add_argument("--lr", default="0,0.01,0.03,0.1", help="learning rates, comma-separated")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    rates = tuple(float(v) for v in args.lr.split(","))
    files: list[str] = []
    for p in map(Path, args.paths):
        found = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        files += [str(q) for q in found if q.name != "SOURCE.txt" and q.stat().st_size]
    start = time.time()
    with Pool(args.jobs) as pool:
        results = pool.map(one, [(f, args.model, rates) for f in files], chunksize=1)
    n = sum(r[0] for r in results)
    print(f"{len(files)} files, {n:,} bytes, model {Path(args.model).name}")
    print("| output-bias lr | transformer alone (bpb) | cm + transformer payload | bpb |")
    print("|---:|---:|---:|---:|")
    for k, lr in enumerate(rates):
        bits = sum(r[1][k][1] for r in results)
        pay = sum(r[1][k][2] for r in results)
        print(f"| {lr:g} | {bits / n:.4f} | {pay:,} | {8 * pay / n:.4f} |")
    print(f"({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
