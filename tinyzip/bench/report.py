"""Render bench results: terminal table, JSON, Markdown, and a two-panel PNG.

The JSON document (schema in docs/bench.md) is the source; the table, Markdown and plot are
all drawn from it, so they cannot disagree.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

#: Columns of the summary table: (header, row key, formatter).
_MIB = 1 << 20


def _int(v: Any) -> str:
    return "-" if v is None else f"{v:,}"


def _f3(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def _speed(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def _mem(v: Any) -> str:
    return "-" if v is None else f"{v / _MIB:.1f}"


def _trip(v: Any) -> str:
    return "n/a" if v is None else "ok" if v else "FAIL"


def _even(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return _human_bytes(v)


def _human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


COLUMNS: list[tuple[str, str, Any]] = [
    ("compressor", "compressor", str),
    ("raw", "raw_bytes", _int),
    ("payload", "payload_bytes", _int),
    ("model", "model_bytes", _int),
    ("bpb", "bpb", _f3),
    ("bpb+model", "bpb_with_model", _f3),
    ("comp kB/s", "compress_kbps", _speed),
    ("decomp kB/s", "decompress_kbps", _speed),
    ("peak MiB", "peak_mem_bytes", _mem),
    ("roundtrip", "roundtrip", _trip),
    ("break-even", "break_even_bytes", _even),
]


def _cells(rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[fmt(r.get(key)) for _, key, fmt in COLUMNS] for r in rows]


def table(doc: dict[str, Any]) -> str:
    """The totals as an aligned plain-text table for the terminal."""
    headers = [h for h, _, _ in COLUMNS]
    body = _cells(doc["results"])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                       for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for cells in body:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    meta = doc["meta"]
    lines.append("")
    lines.append(
        f"{meta['n_files']} files, {meta['raw_bytes']:,} bytes; break-even: corpus size from "
        f"which {meta['reference'] or 'tinyzip'} (model + payload) is smaller; "
        f"peak memory: {meta['peak_mem_method']}"
    )
    failed = [r["compressor"] for r in doc["results"] if r["roundtrip"] is False]
    if failed:
        lines.append("ROUND TRIP FAILED: " + ", ".join(failed) + " (see the error field)")
    for name, why in meta.get("skipped", {}).items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def markdown(doc: dict[str, Any]) -> str:
    """Totals table, per-file bpb matrix, notes: a page that reads on its own."""
    meta = doc["meta"]
    out = [f"# tinyzip bench: {', '.join(meta['paths'])}", ""]
    out.append(
        f"{meta['n_files']} files, {meta['raw_bytes']:,} raw bytes. Measured {meta['date']} on "
        f"{meta['platform']} ({meta['cpu_count']} CPUs), Python {meta['python']}."
    )
    out.append("")
    headers = [h for h, _, _ in COLUMNS]
    out.append("| " + " | ".join(headers) + " |")
    out.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    for cells in _cells(doc["results"]):
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "bpb: payload bits per raw byte; bpb+model: the same with the model (checkpoint, "
        "dictionary, weights) counted once over the whole corpus; kB/s: 1000 bytes of raw "
        f"input per second; peak memory: {meta['peak_mem_method']}. Break-even: the corpus "
        f"size from which {meta['reference'] or 'tinyzip'}'s model + payload is smaller than "
        "that compressor's, from the measured rates (`never` if its rate is not lower)."
    )
    wins_below = [r for r in doc["results"] if r.get("tinyzip_wins_below_bytes") is not None]
    for r in wins_below:
        out.append(
            f"Against {r['compressor']}, {meta['reference']} is smaller only below "
            f"{_human_bytes(r['tinyzip_wins_below_bytes'])} "
            "(its model is smaller, its rate is not)."
        )
    out.append("")

    files = sorted({r["file"] for r in doc["files"]})
    names = [r["compressor"] for r in doc["results"]]
    if files:
        out.append("## bpb per file")
        out.append("")
        out.append("| file | raw | " + " | ".join(names) + " |")
        out.append("|---|---:|" + "---:|" * len(names))
        by = {(r["file"], r["compressor"]): r for r in doc["files"]}
        for f in files:
            raw = next((by[(f, n)]["raw_bytes"] for n in names if (f, n) in by), None)
            cells = []
            for n in names:
                r = by.get((f, n))
                if r is None:
                    cells.append("")
                elif r["roundtrip"] is False:
                    cells.append("FAIL")
                else:
                    cells.append(_f3(r["bpb"]))
            out.append(f"| {f} | {_int(raw)} | " + " | ".join(cells) + " |")
        out.append("")

    notes = [f"- {r['compressor']}: {r['error']}" for r in doc["results"] if r.get("error")]
    notes += [f"- {n}: {why}" for n, why in meta.get("skipped", {}).items()]
    notes += [f"- {n}: {note}" for n, note in meta.get("notes", {}).items()]
    if notes:
        out.append("## Notes")
        out.append("")
        out.extend(notes)
        out.append("")
    out.append(f"Command: `{meta['command']}`")
    out.append("")
    return "\n".join(out)


def plot(doc: dict[str, Any], path: Path) -> None:
    """Left: bpb vs compress speed (log x). Right: model + payload bytes vs corpus size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["results"] if r["bpb"] is not None]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2))
    markers = {"classic": "o", "external": "s", "tinyzip": "*", "generic": "D"}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {r["compressor"]: colors[i % len(colors)] for i, r in enumerate(rows)}

    for r in rows:
        speed = r["compress_kbps"]
        if speed is None or speed <= 0:
            continue
        size = 220 if r["kind"] == "tinyzip" else 60
        left.scatter(speed, r["bpb"], s=size, marker=markers.get(r["kind"], "o"),
                     color=color_of[r["compressor"]],
                     edgecolors="red" if r["roundtrip"] is False else "none")
        left.annotate(r["compressor"], (speed, r["bpb"]), textcoords="offset points",
                      xytext=(6, 4), fontsize=8)
    left.set_xscale("log")
    left.set_xlabel("compress speed (kB/s, log)")
    left.set_ylabel("bits per byte (payload)")
    left.set_title("rate vs speed")
    left.grid(True, which="both", alpha=0.3)

    raw_total = max(doc["meta"]["raw_bytes"], 1)
    lo = 1e3
    hi = max(raw_total * 100.0, 1e8)
    models = [r["model_bytes"] for r in rows]
    if models and max(models) > 0:
        hi = max(hi, 10.0 * max(models) / 0.01)
    hi = min(hi, 1e13)
    xs = [lo * (hi / lo) ** (i / 199) for i in range(200)]
    for r in rows:
        rate = r["payload_bytes"] / r["raw_bytes"]
        ys = [r["model_bytes"] + rate * x for x in xs]
        style = "-" if r["kind"] == "tinyzip" else "--" if r["kind"] == "generic" else "-"
        width = 2.6 if r["kind"] == "tinyzip" else 1.2
        right.plot(xs, ys, style, lw=width, color=color_of[r["compressor"]],
                   label=f"{r['compressor']} ({r['bpb']:.2f} bpb)")
        n = r.get("break_even_bytes")
        if isinstance(n, int) and lo <= n <= hi:
            y = r["model_bytes"] + rate * n
            right.scatter([n], [y], color=color_of[r["compressor"]], zorder=5, s=25)
            right.axvline(n, color=color_of[r["compressor"]], lw=0.6, ls=":")
    right.axvline(raw_total, color="black", lw=1, ls="-.", label="this corpus")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("corpus size (raw bytes, log)")
    right.set_ylabel("model + payload bytes (log)")
    right.set_title("total size vs corpus size (dots: break-even with tinyzip)")
    right.grid(True, which="both", alpha=0.3)
    right.legend(fontsize=7, loc="upper left")
    names = ", ".join(Path(p).name or p for p in doc["meta"]["paths"])
    fig.suptitle(f"tinyzip bench: {names} "
                 f"({doc['meta']['n_files']} files, {_human_bytes(raw_total)})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
