"""Engine vs fake-quant code length per validation file (issue #5's 1% criterion).

    python benchmarks/bench_engine_gap.py RUN_DIR [--corpus DIR] [--val-fraction 0.05]
        [--freq-bits K ...] [--md OUT.md] [--json OUT.json]

RUN_DIR is a training run (``runs/NAME``): its Lightning checkpoint gives the float model
(scored with fake-quant on, as trained for the last part of the budget), its ``.tzm`` the
integer engine, its ``tokenizer.json`` the tokens. For every file of the corpus the
validation tail (the last ``--val-fraction``, as the trainer splits) is tokenised and cut
into windows of the model's T tokens, each coded from the begin-of-stream token; on those
same tokens the table reports

* fake-quant: -log2 p of the float model with fake-quant on (float64 sums);
* engine ideal: -log2(freq / 2**freq_bits) of the engine's integer tables;
* engine real: the bytes of the rANS payload the coder writes with those tables, the
  windows of a file coded one after the other as one stream (as a chunk of an archive is
  one stream: its 4-byte state is paid once, not per window).

The gap is engine real vs fake-quant, in percent of fake-quant. ``--freq-bits`` scores
the same integer weights at other table precisions (the checkpoint re-saved with only
``freq_bits`` changed), one column set each: what the floor of one count per symbol costs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tinyzip.coder.rans import encode_streams, symbol_ranges
from tinyzip.data.corpus import find_corpus
from tinyzip.data.tokenizer import load_tokenizer
from tinyzip.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from tinyzip.model.engine import Engine
from tinyzip.train.module import TinyzipModule


def _windows(tokens: np.ndarray, t: int) -> list[np.ndarray]:
    return [tokens[i:i + t] for i in range(0, tokens.size, t)]


@torch.no_grad()
def fake_quant_bits(model: torch.nn.Module, windows: list[np.ndarray], bos: int) -> float:
    bits = 0.0
    for w in windows:
        tgt = torch.from_numpy(w.astype(np.int64))[None]
        inp = torch.cat([torch.full((1, 1), bos, dtype=torch.long), tgt[:, :-1]], dim=1)
        logits = model(inp).double()
        bits += float(F.cross_entropy(logits[0], tgt[0], reduction="sum")) / math.log(2)
    return bits


def engine_bits(engine: Engine, windows: list[np.ndarray], freq_bits: int
                ) -> tuple[float, int]:
    """(ideal bits, real payload bytes) of the windows, coded as one rANS stream."""
    ideal = 0.0
    starts_l, freqs_l = [], []
    for w in windows:
        tables = engine.tables_parallel(w[None].astype(np.int64))[0]
        s, f = symbol_ranges(tables, w)
        ideal += float(np.sum(freq_bits - np.log2(f.astype(np.float64))))
        starts_l.append(s)
        freqs_l.append(f)
    starts = np.concatenate(starts_l)[:, None]
    freqs = np.concatenate(freqs_l)[:, None]
    payloads = encode_streams(starts, freqs, np.array([starts.shape[0]]), freq_bits=freq_bits)
    return ideal, len(payloads[0])


def with_freq_bits(ckpt: Checkpoint, freq_bits: int, tmp: Path) -> Checkpoint:
    """The same checkpoint with other table precision (weights and tables untouched)."""
    config = dataclasses.replace(ckpt.config, freq_bits=freq_bits)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format_version", "config",
                                                             "tokenizer")}
    return save_checkpoint(tmp / f"fb{freq_bits}.tzm", config=config,
                           tensors={k: v for k, v in ckpt.tensors.items()
                                    if not k.startswith("tokenizer")},
                           tokenizer_table=ckpt.tokenizer_table, meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--corpus", action="append", help="default: the run's corpus")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("--freq-bits", type=int, nargs="+",
                    help="table precisions to score (default: the checkpoint's)")
    ap.add_argument("--md", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    run = json.loads((args.run_dir / "run.json").read_text())
    tzm = sorted(args.run_dir.glob("*.tzm"))
    if not tzm:
        sys.exit(f"no .tzm in {args.run_dir}: the run has not exported yet")
    ckpt = load_checkpoint(tzm[-1])
    module = TinyzipModule.load_from_checkpoint(args.run_dir / "checkpoints" / "last.ckpt",
                                                map_location="cpu")
    model = module.model.float().eval()
    model.set_quant(True)
    tokenizer = load_tokenizer(args.run_dir / "tokenizer.json")
    config = ckpt.config
    tmp = Path(tempfile.mkdtemp())
    precisions = args.freq_bits or [config.freq_bits]
    engines = {fb: Engine(ckpt if fb == config.freq_bits else with_freq_bits(ckpt, fb, tmp))
               for fb in precisions}
    # the run's corpus, as given to the trainer (comma-separated when several)
    corpus = args.corpus or run["corpus"]["source"].split(",")
    files = find_corpus(corpus).files

    rows = []
    for f in files:
        data = f.read_bytes()
        tail = data[len(data) - int(len(data) * args.val_fraction):]  # as data/split.py
        tokens = tokenizer.encode(tail)
        if tokens.size == 0:
            continue
        windows = _windows(tokens, config.window)
        fq = fake_quant_bits(model, windows, config.bos_id)
        row = {"file": f.rel, "bytes": len(tail), "tokens": int(tokens.size),
               "fake_quant_bits": fq}
        for fb, engine in engines.items():
            ideal, real = engine_bits(engine, windows, fb)
            row[f"engine_ideal_bits_fb{fb}"] = ideal
            row[f"engine_real_bytes_fb{fb}"] = real
            print(f"{f.rel}: {len(tail)} B, fq {fq / len(tail):.4f}, engine fb {fb} "
                  f"{ideal / len(tail):.4f} ideal / {real * 8 / len(tail):.4f} real bpb",
                  flush=True)
        rows.append(row)

    tot = {k: sum(r[k] for r in rows) for k in rows[0] if k not in ("file", "tokens")}
    result = {"run": str(args.run_dir), "checkpoint": tzm[-1].name, "config": config.to_dict(),
              "val_fraction": args.val_fraction, "files": rows, "total": tot}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    flags = " --freq-bits " + " ".join(map(str, precisions)) if args.freq_bits else ""
    md = [f"# Engine vs fake-quant code length: `{tzm[-1].name}`", "",
          f"Vocabulary {config.vocab_size}, checkpoint freq_bits {config.freq_bits}, window "
          f"{config.window}; validation tails ({args.val_fraction:.0%} of each file), windows "
          "of T tokens from BOS, coded as one rANS stream per file. Command: `python "
          f"benchmarks/bench_engine_gap.py {args.run_dir}{flags}`. Columns per precision k: "
          "engine ideal / real bpb and the gap of real to fake-quant.", "",
          "| file | bytes | fake-quant bpb | "
          + " | ".join(f"k={fb} ideal | k={fb} real | k={fb} gap" for fb in precisions) + " |",
          "|---|---:|---:|" + "---:|---:|---:|" * len(precisions)]
    for r in [*rows, {"file": "**total**", **tot}]:
        fq = r["fake_quant_bits"] / r["bytes"]
        cells = []
        for fb in precisions:
            real = r[f"engine_real_bytes_fb{fb}"] * 8 / r["bytes"]
            cells += [f"{r[f'engine_ideal_bits_fb{fb}'] / r['bytes']:.4f}", f"{real:.4f}",
                      f"{(real - fq) / fq * 100:+.2f}%"]
        md.append(f"| {r['file']} | {r['bytes']:,} | {fq:.4f} | " + " | ".join(cells) + " |")
    text = "\n".join(md) + "\n"
    if args.md:
        args.md.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
