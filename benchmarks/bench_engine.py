"""Engine throughput: step mode (decoder) and parallel mode (encoder), random weights.

    python benchmarks/bench_engine.py [--preset small] [--streams 64] [--steps 256]
        [--length 512] [--backend numpy [torch]] [--out benchmarks/results/engine.json]

Throughput counts one byte per token (byte vocabulary), all streams together. The
weights are random (``checkpoint.random_tensors``): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from tinyzip.model.checkpoint import byte_tokenizer_table, random_tensors, save_checkpoint
from tinyzip.model.config import ModelConfig
from tinyzip.model.engine import Engine


def _rates(n_tokens: int, wall_s: float, cpu_s: float) -> dict[str, float]:
    return {"tokens": n_tokens, "seconds": round(wall_s, 3), "cpu_seconds": round(cpu_s, 3),
            "kB_per_s": round(n_tokens / wall_s / 1000, 2),
            "kB_per_cpu_s": round(n_tokens / cpu_s / 1000, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--streams", type=int, default=64, help="B")
    parser.add_argument("--steps", type=int, default=256, help="step-mode tokens per stream")
    parser.add_argument("--length", type=int, default=512, help="parallel-mode T")
    parser.add_argument("--backend", nargs="+", default=["numpy"], choices=["numpy", "torch"])
    parser.add_argument("--out", default="benchmarks/results/engine.json")
    args = parser.parse_args(argv)

    config = ModelConfig.preset(args.preset)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "bench.tzm", config=config,
                               tensors=random_tensors(config, seed=0),
                               tokenizer_table=byte_tokenizer_table(), meta={"name": "bench"})
    b = args.streams
    tokens = np.random.default_rng(0).integers(0, 256, size=(b, max(args.steps, args.length)))
    runs = []
    for backend in args.backend:
        engine = Engine(ckpt, backend=backend)
        engine.reset(b)
        inputs = np.full(b, engine.bos)
        # wall clock and process CPU time: on a shared machine the CPU figure is the
        # steadier one (with 1 BLAS thread it is what a quiet core would take)
        start, cpu = time.perf_counter(), time.process_time()
        for t in range(args.steps):
            engine.step(inputs)
            inputs = tokens[:, t]
        step_s, step_cpu = time.perf_counter() - start, time.process_time() - cpu

        start, cpu = time.perf_counter(), time.process_time()
        engine.tables_parallel(tokens[:, :args.length])
        parallel_s, parallel_cpu = time.perf_counter() - start, time.process_time() - cpu
        runs.append({"backend": backend,
                     "step": _rates(b * args.steps, step_s, step_cpu),
                     "parallel": _rates(b * args.length, parallel_s, parallel_cpu)})

    result = {
        "preset": args.preset, "config": config.to_dict(), "n_params": config.n_params,
        "checkpoint_bytes": ckpt.n_bytes, "streams": b, "step_tokens_per_stream": args.steps,
        "parallel_length": args.length, "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__,
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                    "threads_env": {k: os.environ.get(k) for k in
                                    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}},
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
