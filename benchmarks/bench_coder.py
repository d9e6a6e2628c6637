"""Speed and size of the rANS coder (coder/rans.py). A benchmark, not a test.

    python benchmarks/bench_coder.py [--symbols N] [--streams B] [--repeats R]

Measures encode and decode symbols/s (median of R runs) for B streams with 256-symbol
peaked tables and with binary tables (the bitwise predictor's case: one decode call per
bit), and the payload size against the ideal code length sum(-log2(f / 2**freq_bits)).

Decode time counts only the coder: tables are computed before the clock starts, but the
cumulative sums and the symbol search that decoding needs are inside
``StreamDecoder.decode`` and are timed. Encode time counts ``encode_streams`` given
(start, freq) per symbol; ``symbol_ranges`` (one call per step, as the lockstep encoder
makes them) is timed separately. Tables cycle through 64 pre-computed (B, V) sets so that
they sit in cache as a predictor's fresh output would.

Writes benchmarks/results/coder.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from tinyzip.coder.rans import StreamDecoder, encode_streams, symbol_ranges

RESULTS = Path(__file__).resolve().parent / "results" / "coder.json"


def peaked_tables(
    rng: np.random.Generator, n: int, n_symbols: int, freq_bits: int
) -> NDArray[np.uint32]:
    """n random tables shaped like a language model's: softmax of 3*N(0,1) logits.

    Quantised as floor(p * (M - V)) + 1 with the remainder on the most likely symbol, so
    every symbol has at least 1 and each row sums to M = 2**freq_bits exactly.
    """
    total = 1 << freq_bits
    logits = 3.0 * rng.standard_normal((n, n_symbols))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    freq = np.floor(p * (total - n_symbols)).astype(np.int64) + 1
    top = p.argmax(axis=1)
    freq[np.arange(n), top] += total - freq.sum(axis=1)
    return np.asarray(freq, dtype=np.uint32)


def sample(rng: np.random.Generator, tables: NDArray[np.uint32], total: int) -> NDArray[np.int64]:
    """One symbol per row drawn from that row's distribution (rows sum to ``total``)."""
    n, n_symbols = tables.shape
    cum = np.cumsum(tables.reshape(-1), dtype=np.int64)  # row i offset by i * total
    rows = np.arange(n, dtype=np.int64)
    j = np.searchsorted(cum, rows * total + rng.integers(0, total, size=n), side="right")
    return np.asarray(j - rows * n_symbols, dtype=np.int64)


def median_rate(n: int, seconds: list[float]) -> float:
    return n / statistics.median(seconds)


class Clock:
    """Wall and process CPU time of a block. CPU time is reported too because the machines
    this runs on are often shared: under contention wall time mostly measures the others."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __enter__(self) -> Clock:
        self._w0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall.append(time.perf_counter() - self._w0)
        self.cpu.append(time.process_time() - self._c0)


def run_case(
    *,
    n_symbols: int,
    freq_bits: int,
    n_streams: int,
    n_total: int,
    repeats: int,
    seed: int,
    n_step_sets: int = 64,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    total = 1 << freq_bits
    n_steps = n_total // n_streams
    # Step t uses the table set t % n_step_sets, one (B, V) array as a predictor would hand
    # over: realistic variety, held in memory once (n_total * V integers would not fit).
    step_sets = peaked_tables(rng, n_step_sets * n_streams, n_symbols, freq_bits)
    step_sets = step_sets.reshape(n_step_sets, n_streams, n_symbols)
    symbols = np.stack(
        [sample(rng, step_sets[t % n_step_sets], total) for t in range(n_steps)]
    )  # (T, B)
    lengths = np.full(n_streams, n_steps, dtype=np.int64)
    starts = np.empty((n_steps, n_streams), dtype=np.uint32)
    freqs = np.empty((n_steps, n_streams), dtype=np.uint32)

    # symbol_ranges per step, as the lockstep encoder calls it.
    ranges = Clock()
    for _ in range(repeats):
        with ranges:
            for t in range(n_steps):
                starts[t], freqs[t] = symbol_ranges(step_sets[t % n_step_sets], symbols[t])

    encode = Clock()
    for _ in range(repeats):
        with encode:
            payloads = encode_streams(starts, freqs, lengths, freq_bits=freq_bits)

    decode = Clock()
    for _ in range(repeats):
        decoded = np.empty((n_steps, n_streams), dtype=np.int64)
        with decode:
            dec = StreamDecoder(payloads, freq_bits=freq_bits)
            for t in range(n_steps):
                decoded[t] = dec.decode(step_sets[t % n_step_sets])
            dec.finish()
        if not np.array_equal(decoded, symbols):
            raise SystemExit(f"round trip FAILED for V={n_symbols}")

    ideal_bits = float(np.sum(freq_bits - np.log2(freqs.astype(np.float64))))
    payload_bytes = sum(len(p) for p in payloads)
    n = n_steps * n_streams
    return {
        "n_symbols": n_symbols,
        "freq_bits": freq_bits,
        "streams": n_streams,
        "symbols": n,
        "repeats": repeats,
        "symbol_ranges_sym_per_s": median_rate(n, ranges.wall),
        "encode_sym_per_s": median_rate(n, encode.wall),
        "decode_sym_per_s": median_rate(n, decode.wall),
        "symbol_ranges_sym_per_cpu_s": median_rate(n, ranges.cpu),
        "encode_sym_per_cpu_s": median_rate(n, encode.cpu),
        "decode_sym_per_cpu_s": median_rate(n, decode.cpu),
        "symbol_ranges_wall_s": ranges.wall,
        "encode_wall_s": encode.wall,
        "decode_wall_s": decode.wall,
        "encode_cpu_s": encode.cpu,
        "decode_cpu_s": decode.cpu,
        "payload_bytes": payload_bytes,
        "ideal_bytes": ideal_bits / 8,
        "overhead_pct": 100 * (payload_bytes * 8 / ideal_bits - 1),
        "bits_per_symbol": payload_bytes * 8 / n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", type=int, default=1 << 20, help="symbols per case")
    ap.add_argument("--streams", type=int, default=64, help="B, parallel streams")
    ap.add_argument("--repeats", type=int, default=5, help="runs per case (median)")
    ap.add_argument("--freq-bits", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    cases = []
    for v in (256, 2):
        cases.append(
            run_case(
                n_symbols=v,
                freq_bits=args.freq_bits,
                n_streams=args.streams,
                n_total=args.symbols,
                repeats=args.repeats,
                seed=1234,
            )
        )
    result = {
        "command": "python benchmarks/bench_coder.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": load_before,
        "load_average_1min_after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "rates": "symbols per wall-clock second (median of repeats); *_per_cpu_s: per CPU second",
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print("M symbols/s, median of repeats, wall clock (per CPU second in brackets)")
    print(
        f"{'V':>5} {'B':>4} {'symbols':>9} {'ranges':>14} {'encode':>14} {'decode':>14} "
        f"{'bits/sym':>8} {'overhead':>9}"
    )

    def rate(c: dict[str, Any], what: str) -> str:
        return f"{c[what + '_sym_per_s'] / 1e6:.2f} ({c[what + '_sym_per_cpu_s'] / 1e6:.2f})"

    for c in cases:
        print(
            f"{c['n_symbols']:>5} {c['streams']:>4} {c['symbols']:>9} "
            f"{rate(c, 'symbol_ranges'):>14} {rate(c, 'encode'):>14} {rate(c, 'decode'):>14} "
            f"{c['bits_per_symbol']:>8.3f} {c['overhead_pct']:>8.3f}%"
        )
    print(f"load average (1 min) before {load_before}, after {result['load_average_1min_after']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
