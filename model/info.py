"""``tinyzip info MODEL.tzm [--json]``: print a checkpoint's card (numpy only)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, NoReturn

from tinyzip.model.checkpoint import Checkpoint, load_checkpoint

from tinyzip.errors import CheckpointError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # no sys.exit below the CLI
        raise UsageError(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tinyzip info", description="Print the card of a .tzm checkpoint.")
    parser.add_argument("model", help="path of a .tzm file, or the name of a shipped one")
    parser.add_argument("--json", action="store_true", help="print the card as JSON")
    return parser


def _resolve(model: str) -> Path:
    path = Path(model)
    if path.is_file():
        return path
    from tinyzip.models import packaged_checkpoints  # only when not a plain path

    shipped = packaged_checkpoints()
    if model in shipped:
        return shipped[model]
    raise CheckpointError(f"{model}: no such checkpoint file or shipped model")


def card(checkpoint: Checkpoint) -> dict[str, Any]:
    """Everything ``info`` shows, JSON-able."""
    c = checkpoint.config
    meta = checkpoint.meta
    return {
        "name": checkpoint.name,
        "model_id": checkpoint.model_id_hex,
        "file_bytes": checkpoint.n_bytes,
        "format_version": meta.get("format_version"),
        "config": c.to_dict(),
        "n_params": c.n_params,
        "tokenizer": meta.get("tokenizer"),
        "corpus": meta.get("corpus"),
        "training": meta.get("training"),
        "bpb": meta.get("bpb"),
        "export": meta.get("export"),
        "cm_primer": meta.get("cm_primer"),
    }


def _text(info: dict[str, Any]) -> str:
    c = info["config"]
    lines = [
        f"name        {info['name']}",
        f"model id    {info['model_id']}",
        f"file        {info['file_bytes']:,} bytes, format {info['format_version']}",
        f"model       {info['n_params']:,} int8 weights: d_model {c['d_model']}, "
        f"{c['n_layers']} layers, {c['n_heads']} heads, d_ff {c['d_ff']}, window {c['window']}",
        f"vocabulary  {c['vocab_size']} symbols "
        f"({(info['tokenizer'] or {}).get('kind', '?')} tokenizer)",
    ]
    primer = info["cm_primer"]
    lines.append(f"cm primer   {primer['bytes']:,} bytes (sha256 {primer['sha256'][:16]}...)"
                 if primer else "cm primer   none")
    bpb = info["bpb"]
    if bpb:
        lines.append(
            f"val bpb     float {bpb.get('float', float('nan')):.4f}, fake-quant "
            f"{bpb.get('fake_quant', float('nan')):.4f}, engine "
            f"{bpb.get('engine', float('nan')):.4f} (gap "
            f"{bpb.get('gap_engine_vs_fake_quant', float('nan')):+.4f}) on "
            f"{bpb.get('n_bytes', '?')} bytes")
    else:
        lines.append("val bpb     not measured")
    if info["corpus"]:
        lines.append(f"corpus      {json.dumps(info['corpus'], sort_keys=True)}")
    if info["training"]:
        lines.append(f"training    {json.dumps(info['training'], sort_keys=True)}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """Entry point of ``tinyzip info``; raises tinyzip errors, prints the card."""
    args = _build_parser().parse_args(argv)
    info = card(load_checkpoint(_resolve(args.model)))
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else _text(info))
    return 0
