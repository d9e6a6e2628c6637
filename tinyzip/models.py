"""Which predictor codes an archive: the choice at compression, the lookup at decompression.

Model names a user can give (``-m/--model``):

* ``cm`` (or ``cm:LEVEL``): the built-in adaptive context-mixing model, no checkpoint;
* ``zstd``: no model at all, every frame is zstd or stored (fast, weakest);
* ``cm+CHECKPOINT`` (a path or a shipped name): cm with a byte-level checkpoint's
  distribution as one more input (model/cm_transformer.py): the best ratio on data
  like the checkpoint's training data, at the engine's speed;
* a path to a ``.tzm`` checkpoint, or the name of a checkpoint shipped in
  ``tinyzip.checkpoints`` (e.g. ``default``);
* nothing: the shipped default checkpoint if there is one, else ``cm``.

Decoding never reads a default that could drift: the archive's descriptor says
which predictor and parameters were used, and a checkpoint is found by its
SHA-256 id among the packaged checkpoints and the path given with ``-m``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tinyzip.coder.archive import ModelResolver
from tinyzip.errors import UsageError, WrongModelError
from tinyzip.model.predictor import Predictor

ModelSpec = str | os.PathLike[str] | Predictor | None

#: Descriptor of archives coded without a model (zstd and stored frames only).
NO_MODEL: dict[str, Any] = {"name": "zstd"}


@dataclass(frozen=True)
class ModelChoice:
    """A resolved model: what codes the frames, and what the archive header records."""

    predictor: Predictor | None
    descriptor: dict[str, Any]
    model_id: bytes
    model_bytes: int
    """Bytes a user must ship beside the decoder for this model (0 for built-ins)."""
    label: str
    """Human name for messages and ``tinyzip list``."""


def _descriptor_id(descriptor: dict[str, Any]) -> bytes:
    canonical = json.dumps(descriptor, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def packaged_checkpoints() -> dict[str, Path]:
    """Name -> path of every .tzm shipped in tinyzip.checkpoints."""
    found: dict[str, Path] = {}
    root = resources.files("tinyzip.checkpoints")
    for entry in root.iterdir():
        if entry.name.endswith(".tzm"):
            found[entry.name[: -len(".tzm")]] = Path(str(entry))
    return found


def _default_checkpoint() -> Path | None:
    shipped = packaged_checkpoints()
    for name, path in sorted(shipped.items()):
        if name == "default" or name.startswith("default-"):
            return path
    return None


def _context_mix(level: str | int | None) -> Predictor:
    from tinyzip.model.context_mix import ContextMixPredictor

    if level is None:
        return ContextMixPredictor()
    try:
        return ContextMixPredictor(level=level)  # type: ignore[call-arg]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"unknown model level {level!r} for cm: {exc}") from exc


#: Online adaptation levels (``--adapt``, ``adapt=``): how much the model learns the data
#: at hand while it codes, on top of what a checkpoint knows. "none": the checkpoint
#: alone, frozen; "fast": cm at level 1 (four order-k contexts); "max": cm at its default
#: level (model/context_mix.py LEVELS). With a checkpoint, "fast" and "max" mix its
#: distribution into cm as one more input (cm+transformer). The archive header records
#: the predictor and its parameters, so decoding needs no flag.
ADAPT_LEVELS = ("none", "fast", "max")
#: Used when none is given: the best ratio, still >= 30 KB/s each way (issue #6).
DEFAULT_ADAPT = "max"
_FAST_CM_LEVEL = 1


def _cm_level(adapt: str) -> int | None:
    """cm level for an adaptation level (None: the default level)."""
    return _FAST_CM_LEVEL if adapt == "fast" else None


def adapt_level(descriptor: dict[str, Any]) -> str:
    """The --adapt level an archive's descriptor amounts to: "none", "fast", "max",
    "custom" (cm parameters of no level) or "" (no model)."""
    name = descriptor.get("name")
    if name == "transformer":
        return "none"
    cm = descriptor.get("cm") if name == "cm+transformer" else descriptor
    if not isinstance(cm, dict) or cm.get("name") != "cm":
        return ""
    preset = str(cm.get("preset", ""))
    return {"l3": "max", "l1": "fast"}.get(preset[:2], "custom")


def _check_adapt(adapt: str | None) -> None:
    if adapt is not None and adapt not in ADAPT_LEVELS:
        raise UsageError(f"--adapt must be one of {', '.join(ADAPT_LEVELS)}, got {adapt!r}")


def _checkpoint_choice(path: Path, adapt: str | None, *, explicit_cm: bool = False) -> ModelChoice:
    """A .tzm checkpoint's model: the transformer alone (adapt "none"), or cm at the
    level's depth with the checkpoint's tables as an input. Without a level: "max" for a
    byte-level checkpoint, the transformer alone for a BPE one (cm codes bytes)."""
    # lazy imports: only archives with a checkpoint need the engine
    from tinyzip.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    byte_level = checkpoint.tokenizer_table == tuple(bytes([i]) for i in range(256))
    if adapt is None:
        adapt = DEFAULT_ADAPT if byte_level or explicit_cm else "none"
    predictor: Predictor
    if adapt == "none":
        from tinyzip.model.transformer_predictor import TransformerPredictor

        predictor = TransformerPredictor(checkpoint)
    else:
        from tinyzip.model.cm_transformer import CmTransformerPredictor
        from tinyzip.model.context_mix import ContextMixPredictor

        cm = ContextMixPredictor(level=_cm_level(adapt), external_input=True)
        predictor = CmTransformerPredictor(checkpoint, cm=cm)
    return ModelChoice(
        predictor=predictor,
        descriptor=predictor.descriptor(),
        model_id=predictor.model_id,
        model_bytes=path.stat().st_size,
        label=f"{predictor.name} ({path.name}, adapt {adapt})",
    )


def _checkpoint_path(spec: str, what: str) -> Path:
    shipped = packaged_checkpoints()
    path = shipped.get(spec, Path(spec))
    if not path.is_file():
        names = ", ".join(["cm", "zstd", *sorted(shipped)])
        raise UsageError(f"{what} {spec!r} is neither a file nor a known model ({names})")
    return path


def choose_model(model: ModelSpec, adapt: str | None = None) -> ModelChoice:
    """The model to compress with, from what a user or caller asked for.

    ``adapt`` (one of ADAPT_LEVELS, None: the model's default) sets how much it learns
    online; a model name that fixes it already (``cm:LEVEL``, ``cm+CKPT``) takes none
    that disagrees.
    """
    _check_adapt(adapt)
    if isinstance(model, Predictor):
        if adapt is not None:
            raise UsageError("adapt= applies to model names, not to a Predictor object")
        return ModelChoice(model, model.descriptor(), model.model_id, 0, model.name)
    if model is None:
        default = _default_checkpoint()
        if default is not None:
            return _checkpoint_choice(default, adapt)
        model = "cm"
    text = os.fspath(model)
    if text == "zstd":
        if adapt not in (None, "none"):
            raise UsageError(f"--adapt {adapt}: 'zstd' has no model to adapt")
        return ModelChoice(None, NO_MODEL, _descriptor_id(NO_MODEL), 0, "zstd")
    if text == "cm" or text.startswith("cm:"):
        if text.startswith("cm:") and adapt is not None:
            raise UsageError(f"give either the level in the model name ({text}) or --adapt")
        if adapt == "none":
            raise UsageError(
                "--adapt none leaves cm nothing to do (it is all online learning): give a "
                "checkpoint with -m to code with a frozen model, or -m zstd"
            )
        predictor = _context_mix(text[3:] if text.startswith("cm:") else _cm_level(adapt or ""))
        return ModelChoice(predictor, predictor.descriptor(), predictor.model_id, 0, "cm")
    if text.startswith("cm+"):
        if adapt == "none":
            raise UsageError(f"-m {text} mixes cm in; for the checkpoint alone use -m {text[3:]}")
        return _checkpoint_choice(_checkpoint_path(text[3:], text), adapt, explicit_cm=True)
    return _checkpoint_choice(_checkpoint_path(text, "model"), adapt)


def model_bytes(model: ModelSpec) -> int:
    """Bytes of model a user ships beside the decoder (0 for the built-in predictors)."""
    return choose_model(model).model_bytes


def resolver(model_hint: ModelSpec = None) -> ModelResolver:
    """A ModelResolver for ArchiveReader: builds the predictor an archive names."""

    def resolve(descriptor: dict[str, Any], model_id: bytes) -> Predictor | None:
        if isinstance(model_hint, Predictor) and model_hint.model_id == model_id:
            return model_hint
        name = descriptor.get("name")
        if name == "zstd":
            return None
        if name == "cm":
            from tinyzip.model.context_mix import from_descriptor

            return from_descriptor(descriptor)
        if name == "transformer":
            return _find_checkpoint(descriptor, model_id, model_hint)
        if name == "cm+transformer":
            from tinyzip.model.cm_transformer import from_descriptor as mixed_from_descriptor

            hint = model_hint
            if isinstance(hint, str) and hint.startswith("cm+"):
                hint = hint[3:]
            found = _find_checkpoint(descriptor, model_id, hint)
            if found.descriptor() == descriptor:  # the caller's own predictor
                return found
            return mixed_from_descriptor(descriptor, found.checkpoint)  # type: ignore[attr-defined]
        if isinstance(model_hint, Predictor):
            raise WrongModelError(
                f"archive needs model {name!r} ({model_id.hex()[:16]}), given {model_hint.name!r}"
                f" ({model_hint.model_id.hex()[:16]})"
            )
        raise WrongModelError(
            f"archive needs model {name!r} ({model_id.hex()[:16]}), unknown to this tinyzip"
        )

    return resolve


def _find_checkpoint(
    descriptor: dict[str, Any], model_id: bytes, model_hint: ModelSpec
) -> Predictor:
    from tinyzip.model.engine import load_predictor

    wanted = model_id.hex()
    label = descriptor.get("name_hint", "?")
    if isinstance(model_hint, Predictor):
        if model_hint.model_id != model_id:
            raise WrongModelError(
                f"archive needs model {label} ({wanted[:16]}), given {model_hint.name}"
                f" ({model_hint.model_id.hex()[:16]})"
            )
        return model_hint
    candidates: list[Path] = []
    if model_hint is not None and os.fspath(model_hint) not in ("cm", "zstd"):
        hint = Path(os.fspath(model_hint))
        shipped = packaged_checkpoints()
        candidates.append(shipped.get(str(model_hint), hint))
    candidates += sorted(packaged_checkpoints().values())
    for path in candidates:
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest == wanted:
            return load_predictor(path)
    if model_hint is not None and os.fspath(model_hint) not in ("cm", "zstd"):
        hint_path = Path(os.fspath(model_hint))
        given = (
            hashlib.sha256(hint_path.read_bytes()).hexdigest()[:16]
            if hint_path.is_file()
            else "missing"
        )
        raise WrongModelError(
            f"archive needs model {label} ({wanted[:16]}), but {model_hint} is {given}"
        )
    raise WrongModelError(
        f"archive needs model {label} ({wanted[:16]}), not found: pass it with -m PATH"
    )
