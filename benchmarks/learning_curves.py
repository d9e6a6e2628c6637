"""Learning curves of training runs: validation bits per byte against minutes of training.

Reads each run's ``csv/version_0/metrics.csv`` (``val_bpb`` and ``train_s``, the
training seconds logged with every validation), ``summary.json`` and ``tokens/index.json``,
and puts xz -9e beside them on exactly the validation bytes the runs were scored on (the
tail split of every corpus file, rebuilt here the way the trainer builds it). Writes
``learning_curves.png`` and ``learning_curves.md`` under benchmarks/results/.

The runs must have been trained with ``--val-windows 0`` (the whole validation split):
only then is every run's bpb over the same bytes, whatever its vocabulary. The script
checks it (``val_bytes`` of every validation equals the split's size) and stops otherwise.

    python benchmarks/learning_curves.py --corpus ../shared/corpus/loghub \\
        runs/lc-small-byte-1800 runs/lc-small-bpe1024-600 runs/lc-small-bpe4096-600 \\
        runs/lc-base-byte-600
"""

from __future__ import annotations

import argparse
import csv
import json
import lzma
import re
import statistics
import sys
from pathlib import Path

from tinyzip.data.corpus import find_corpus
from tinyzip.data.split import SplitConfig, split_corpus

RESULTS = Path(__file__).resolve().parent / "results"
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def xz_bits(data: bytes) -> int:
    return 8 * len(lzma.compress(data, preset=XZ_PRESET))


def validation_tails(corpus_dir: str, val_fraction: float) -> list[tuple[str, bytes]]:
    """(file, bytes) of every file's validation tail, in the trainer's order."""
    corpus = find_corpus(corpus_dir)
    split = split_corpus(corpus, SplitConfig(val_fraction=val_fraction))
    return [(seg.file.rel, b"".join(seg.iter_blocks())) for seg in split.val]


def read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    index = json.loads((run_dir / "tokens" / "index.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r.get("val_bpb")]
    if not val or "train_s" not in val[0]:
        raise SystemExit(f"{run_dir}: no val_bpb/train_s rows (trained before train_s was logged?)")
    tok_s = [float(r["tok_s"]) for r in rows if r.get("tok_s")]
    points = [{"step": int(r["step"]), "minutes": float(r["train_s"]) / 60,
               "val_bpb": float(r["val_bpb"]), "val_bytes": int(float(r["val_bytes"])),
               "qat": float(r["qat"]) > 0} for r in val]
    wall = None
    err = run_dir.parent / "lc" / f"{run_dir.name}.err"  # /usr/bin/time -v output, if any
    if err.exists():
        m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", err.read_text())
        wall = m.group(1) if m else None
    train = index["splits"]["train"]
    return {"name": run_dir.name, "summary": summary, "run": run, "index": index,
            "points": points, "tok_s_median": statistics.median(tok_s) if tok_s else float("nan"),
            "bytes_per_token": train["n_bytes"] / train["n_tokens"], "wall": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run dirs (runs/NAME)")
    p.add_argument("--corpus", required=True, help="the corpus the runs were trained on")
    p.add_argument("--commands", type=Path, default=None,
                   help="text file with the exact training commands, copied into the .md")
    p.add_argument("--name", default="learning_curves")
    args = p.parse_args(argv)

    runs = [read_run(d) for d in args.runs]
    fractions = {r["run"]["split"]["val_fraction"] for r in runs}
    if len(fractions) != 1 or any(r["run"]["split"]["holdout"] for r in runs):
        raise SystemExit("runs use different validation splits")
    tails = validation_tails(args.corpus, fractions.pop())
    val = b"".join(b for _, b in tails)
    for r in runs:
        got = {pt["val_bytes"] for pt in r["points"]}
        if got != {len(val)} or r["index"]["splits"]["val"]["n_bytes"] != len(val):
            raise SystemExit(f"{r['name']}: validation covered {sorted(got)} bytes, not the "
                             f"whole split of {len(val)}: train with --val-windows 0")
    xz_concat = xz_bits(val) / len(val)
    per_file = [(name, len(b), xz_bits(b) / len(b)) for name, b in tails]
    xz_files = sum(n * bpb for _, n, bpb in per_file) / len(val)

    # --- plot ---------------------------------------------------------------------------
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        s = r["summary"]
        label = (f"{r['name']} ({s['preset']}, {s['vocab']} {s['vocab_size']}, "
                 f"{s['n_params']:,} params)")
        pts = r["points"][:-1] if len(r["points"]) > 1 else r["points"]  # last = after-fit repeat
        (line,) = ax.plot([q["minutes"] for q in pts], [q["val_bpb"] for q in pts],
                          marker=".", label=label)
        qat = [q for q in pts if q["qat"]]
        if qat:
            ax.plot([qat[0]["minutes"]], [qat[0]["val_bpb"]], marker="o", mfc="none",
                    color=line.get_color(), ms=9)
    ax.axhline(xz_concat, color="k", ls="--", lw=1,
               label=f"xz -9e, validation bytes concatenated ({xz_concat:.3f})")
    ax.axhline(xz_files, color="gray", ls=":", lw=1,
               label=f"xz -9e, each file's tail alone ({xz_files:.3f})")
    ax.set_xlabel("minutes of training (wall clock, validation included; 1 thread)")
    ax.set_ylabel(f"validation bits per byte ({len(val):,} bytes)")
    all_bpb = [q["val_bpb"] for r in runs for q in r["points"]] + [xz_concat, xz_files]
    ax.set_ylim(max(0.0, min(all_bpb) - 0.1), min(3.0, max(all_bpb) + 0.1))
    ax.grid(alpha=0.3)
    ax.set_title("tinyzip training on loghub: validation bpb (open circle: fake-quant on)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    png = RESULTS / f"{args.name}.png"
    fig.savefig(png, dpi=120)

    # --- markdown -----------------------------------------------------------------------
    md: list[str] = [f"# Learning curves on `{args.corpus}`", ""]
    md += [f"Validation: the last {runs[0]['run']['split']['val_fraction']:.0%} of each of the "
           f"{len(tails)} files, {len(val):,} bytes, scored whole by every run "
           "(`--val-windows 0`: every window of T tokens from a begin-of-stream token, "
           "bpb = total bits / total bytes of those same bytes, for every vocabulary). "
           "Minutes are the trainer's `train_s` (wall clock since fit start, validation "
           "pauses included).", "",
           "Machine: 2 shared CPU cores (another engineer's benchmarks ran at the same time), "
           "torch 2.13.0+cpu, `--threads 1`, one training at a time.", ""]
    md += ["| run | preset | vocab | params | steps | wall time | export bytes | tokens/s "
           "(median) | bytes/token | raw bytes/s | final val bpb | export float | export fake-quant | "
           "export engine | float→fake-quant gap | export bytes scored |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        s, e = r["summary"], r["summary"]["export_bpb"]
        gap = (e["fake_quant"] - e["float"]) / e["float"] * 100
        md.append(f"| {r['name']} | {s['preset']} | {s['vocab']} {s['vocab_size']} | "
                  f"{s['n_params']:,} | {s['steps']:,} | {r['wall'] or '?'} | "
                  f"{s['checkpoint_bytes']:,} | {r['tok_s_median']:,.0f} | "
                  f"{r['bytes_per_token']:.2f} | {r['tok_s_median'] * r['bytes_per_token']:,.0f} | "
                  f"{s['val_bpb']:.4f} | {e['float']:.4f} | "
                  f"{e['fake_quant']:.4f} | {e['engine']:.4f} | {gap:+.2f}% | "
                  f"{e['n_bytes']:,} |")
    md += ["", f"xz -9e (python lzma, preset 9 | PRESET_EXTREME, .xz container): "
           f"**{xz_concat:.4f} bpb** on the {len(val):,} validation bytes concatenated; "
           f"**{xz_files:.4f} bpb** with each file's tail compressed alone (sum of sizes).", "",
           "| file | tail bytes | xz -9e bpb alone |", "|---|---|---|"]
    md += [f"| {name} | {n:,} | {bpb:.4f} |" for name, n, bpb in per_file]
    md += ["", "Notes:", "",
           "- final val bpb: the validation after training ended, fake-quant model, whole split.",
           "- export float / fake-quant / integer engine bpb are the exporter's own check, "
           "on up to 64 evenly spaced full windows of T tokens: the same bytes for runs of one "
           "vocabulary and window, but not across vocabularies (column 'export bytes "
           "scored'); compare runs by the val bpb columns.",
           "- tokens/s is the trainer's EMA of training tokens per second (median over logged "
           "steps); bytes/token (training split) converts it to raw bytes/s.",
           "- wall time: `/usr/bin/time -v` of the whole command (tokenising, BPE learning, "
           "training, final validation, export).", ""]
    md += [f"![learning curves]({png.name})", "", "## Curve points", ""]
    for r in runs:
        md += [f"### {r['name']}", "", "| step | minutes | val bpb | fake-quant |",
               "|---|---|---|---|"]
        md += [f"| {q['step']} | {q['minutes']:.2f} | {q['val_bpb']:.4f} | "
               f"{'yes' if q['qat'] else 'no'} |" for q in r["points"]]
        md += ["", "The last row is the validation after training ended.", ""]
    if args.commands is not None:
        md += ["## Commands", "", "From the repository root:", "", "```"]
        md += args.commands.read_text().strip().splitlines() + ["```", ""]
    out = RESULTS / f"{args.name}.md"
    out.write_text("\n".join(md))
    print(f"wrote {png} and {out}; xz -9e {xz_concat:.4f} bpb (concat), {xz_files:.4f} (per file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
