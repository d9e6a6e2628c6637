"""Engine throughput: step mode (decoder) and parallel mode (encoder), per engine and vocab.

    python benchmarks/bench_engine.py [--preset small] [--vocab 256 1024] [--streams 1 8 32 64]
        [--threads 1 2] [--engine compiled numpy] [--steps 256] [--length 1024] [--repeats 3]
        [--frames CKPT.tzm ... --data FILE] [--out benchmarks/results/engine.json]

Random weights (``checkpoint.random_tensors``) for the engine rows: speed hardly depends on
them. Step mode is timed with the attention window already full (the steady state of a
long stream: every step attends to W keys), after ``W`` warm-up steps; parallel mode over
``--length`` positions per stream. Rates count one token per byte (exact for the byte
vocabulary; a BPE token covers more, see the frame rows). Each figure is the median of
``--repeats`` runs (numpy: one), as wall clock and as process CPU time (on a shared machine the CPU
figure is the steadier one); the load average is recorded before and after.

``--frames`` adds whole-frame rows for trained checkpoints on real bytes: the compiled
encoder (``TransformerPredictor.encode_frame``: parallel pass + rANS) and decoder
(``decode_frame``: steps + rANS in C), in raw KB/s of ``--data``, checked to round-trip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tinyzip.model.checkpoint import (
    byte_tokenizer_table,
    load_checkpoint,
    random_tensors,
    save_checkpoint,
)
from tinyzip.model.config import ModelConfig
from tinyzip.model.engine import Engine, compiled_available


def _timed(fn: Callable[[], object], n_tokens: int, repeats: int) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    wall, cpu_s = statistics.median(walls), statistics.median(cpus)
    return {"tokens": n_tokens, "seconds": round(wall, 4), "cpu_seconds": round(cpu_s, 4),
            "kB_per_s": round(n_tokens / wall / 1000, 2),
            "kB_per_cpu_s": round(n_tokens / max(cpu_s, 1e-9) / 1000, 2)}


def _checkpoint(config: ModelConfig, tmp: Path) -> object:
    if config.vocab_size == 256:
        table = byte_tokenizer_table()
    else:  # the engine never reads the table: any partition of bytes will do
        table = [bytes([i]) for i in range(256)] + [
            bytes([i % 256, (i * 7) % 256]) for i in range(256, config.vocab_size)]
    return save_checkpoint(tmp / f"bench{config.vocab_size}.tzm", config=config,
                           tensors=random_tensors(config, seed=0), tokenizer_table=table,
                           meta={"name": "bench"})


def _engine_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = []
    base = ModelConfig.preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            config = ModelConfig(**{**base.to_dict(), "vocab_size": vocab})
            ckpt = _checkpoint(config, Path(tmp))
            for kind in args.engine:
                for threads in (args.threads if kind == "compiled" else [1]):
                    engine = Engine(ckpt, compiled=kind == "compiled", threads=threads)
                    for b in args.streams:
                        steps = args.steps if kind == "compiled" else max(8, args.steps // 8)
                        repeats = args.repeats if kind == "compiled" else 1  # numpy: slow
                        tokens = np.random.default_rng(0).integers(
                            0, vocab, size=(b, max(steps, args.length)))
                        engine.reset(b)
                        inputs = np.full(b, engine.bos)
                        for t in range(config.window):  # fill the window: steady state
                            engine.step(inputs)
                            inputs = tokens[:, t % tokens.shape[1]]

                        def run_steps(engine: Engine = engine, tokens: np.ndarray = tokens,
                                      steps: int = steps) -> None:
                            for t in range(steps):
                                engine.step(tokens[:, t])

                        row = {"engine": kind, "vocab": vocab, "streams": b, "threads": threads,
                               "step": _timed(run_steps, b * steps, repeats),
                               "parallel": _timed(lambda e=engine, x=tokens[:, :args.length]:
                                                  e.tables_parallel(x), b * args.length,
                                                  repeats)}
                        print(json.dumps(row))
                        runs.append(row)
    return runs


def _frame_rows(args: argparse.Namespace) -> list[dict[str, object]]:
    from tinyzip.coder.rans import StreamDecoder
    from tinyzip.model.transformer_predictor import TransformerPredictor

    raw = Path(args.data).read_bytes()
    rows: list[dict[str, object]] = []
    for path in args.frames:
        ckpt = load_checkpoint(path)
        for threads in args.threads:
            predictor = TransformerPredictor(ckpt, compiled=True)
            predictor.engine.threads = threads
            symbols = predictor.to_symbols(raw)
            b = args.frame_streams
            t = len(symbols) // b
            grid = symbols[: b * t].reshape(b, t).astype(
                np.uint8 if ckpt.config.vocab_size <= 256 else np.uint16)
            lengths = np.full(b, t, dtype=np.int64)
            n_bytes = len(predictor.from_symbols(symbols[: b * t]))
            payloads: list[bytes] = []

            def encode(p: TransformerPredictor = predictor, g: np.ndarray = grid,
                       n: np.ndarray = lengths) -> None:
                payloads[:] = p.encode_frame(g, n) or []

            enc = _timed(encode, n_bytes, args.repeats)
            out = np.zeros_like(grid)

            def decode(p: TransformerPredictor = predictor, g: np.ndarray = out,
                       n: np.ndarray = lengths) -> None:
                decoder = StreamDecoder(payloads, freq_bits=p.freq_bits)
                p.decode_frame(g, n, np.arange(b), decoder)
                decoder.finish()

            dec = _timed(decode, n_bytes, args.repeats)
            assert np.array_equal(out, grid), "frame round trip failed"
            row = {"checkpoint": Path(path).name, "vocab": ckpt.config.vocab_size,
                   "config": ckpt.config.to_dict(), "data": Path(args.data).name,
                   "bytes": n_bytes, "tokens": b * t,
                   "bytes_per_token": round(n_bytes / (b * t), 3), "streams": b,
                   "threads": threads, "payload_bytes": sum(len(p) for p in payloads),
                   "encode": enc, "decode": dec}
            print(json.dumps(row))
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--vocab", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 64], help="B")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engine", nargs="+", default=["compiled", "numpy"],
                        choices=["compiled", "numpy"])
    parser.add_argument("--steps", type=int, default=256,
                        help="timed step-mode tokens per stream (numpy: / 8)")
    parser.add_argument("--length", type=int, default=1024, help="parallel-mode T")
    parser.add_argument("--repeats", type=int, default=3, help="(numpy: 1)")
    parser.add_argument("--frames", nargs="*", default=[], help="trained .tzm checkpoints")
    parser.add_argument("--data", help="raw bytes for --frames")
    parser.add_argument("--frame-streams", type=int, default=32)
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    args = parser.parse_args(argv)
    if "compiled" in args.engine and not compiled_available():
        parser.error("the compiled engine is not built (pip install -e .)")
    if args.frames and not args.data:
        parser.error("--frames needs --data")

    load_before = os.getloadavg()
    runs = _engine_rows(args)
    frames = _frame_rows(args) if args.frames else []
    config = ModelConfig.preset(args.preset)
    result = {
        "preset": args.preset, "config": config.to_dict(), "n_params": config.n_params,
        "step_tokens_per_stream": args.steps, "parallel_length": args.length,
        "repeats": args.repeats, "runs": runs, "frames": frames,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
                    "load_avg_1min_before": round(load_before[0], 2),
                    "load_avg_1min_after": round(os.getloadavg()[0], 2),
                    "threads_env": {k: os.environ.get(k) for k in
                                    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
