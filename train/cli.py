"""``tinyzip train`` / ``train.py``: corpus directory in, int8 ``.tzm`` checkpoint out.

The steps, each owned elsewhere:

1. ``tinyzip.data``: find the corpus files, split train/validation, build or
   load the tokenizer, tokenise into memory-mapped files under the run dir;
2. ``tinyzip.train.module``: train ``tinyzip.model.transformer.Transformer``
   with Lightning (CSV logs always, wandb on request, checkpoints for
   ``--resume``, early stopping, fake-quant for the last part of the budget);
3. ``tinyzip.model.export``: write the int8 checkpoint and measure its bpb.

Everything a run writes stays in its run dir (``runs/NAME/``, git-ignored):
``run.json`` (resolved settings, read back by ``--resume``), ``tokenizer.json``,
``tokens/``, ``checkpoints/last.ckpt``, ``csv/``, ``wandb/``, ``summary.json``
and the exported ``NAME-<sha8>.tzm`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from tinyzip.model.primer import DEFAULT_PRIMER_BYTES, MAX_PRIMER_BYTES

from tinyzip.errors import TinyzipError, UsageError

PROG = "tinyzip train"
PRESETS = ("tiny", "small", "base")
DEFAULT_MAX_TIME_S = 600.0
#: Set for the processes Lightning launches for the other ranks, so they find the
#: run dir rank 0 prepared instead of creating a new one.
RUN_DIR_ENV = "TINYZIP_RUN_DIR"

EXAMPLES = """\
examples:
  train.py --corpus logs/                          small preset, byte vocab, 10 minutes
  train.py --corpus logs/ --preset tiny --max-time 60
  train.py --corpus logs/ --vocab bpe --vocab-size 2048 --max-steps 5000
  train.py --corpus 'logs/**/*.log.gz' --holdout 'nginx*' --val-fraction 0.02
  train.py --corpus logs/ --resume                 continue runs/logs-small-byte
  train.py --corpus logs/ --wandb --accelerator gpu --devices 2 --strategy ddp
  train.py --corpus logs/ --out checkpoints/logs.tzm

The run dir (runs/NAME/) holds the token cache, Lightning checkpoints, CSV logs
(csv/version_N/metrics.csv) and, unless --out is given, the exported NAME-<sha8>.tzm.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a tinyzip model on a corpus and export it as an int8 .tzm checkpoint.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = p.add_argument_group("data")
    data.add_argument("--corpus", required=True, action="append", metavar="DIR",
                      help="directory (recursive), glob or file; repeat for several files. "
                           ".gz/.xz/.zst members are read decompressed")
    data.add_argument("--vocab", choices=("byte", "bpe"), default="byte",
                      help="byte: 256 symbols; bpe: byte-level BPE trained on the corpus "
                           "(default: %(default)s)")
    data.add_argument("--vocab-size", type=int, default=2048, metavar="N",
                      help="BPE vocabulary size, 512..8192 (default: %(default)s)")
    data.add_argument("--val-fraction", type=float, default=0.05, metavar="F",
                      help="tail share of each file used for validation (default: %(default)s)")
    data.add_argument("--holdout", action="append", default=[], metavar="GLOB",
                      help="files matching GLOB (path or base name) go to validation whole; "
                           "repeatable")
    data.add_argument("--primer-bytes", type=int, default=DEFAULT_PRIMER_BYTES, metavar="N",
                      help="byte models: carry at most N bytes of training lines, one of "
                           "each kind, for cm to learn before the data (model/primer.py; "
                           "0 = none; default: %(default)s)")
    data.add_argument("--include-hidden", action="store_true",
                      help="also train on hidden files and folders")
    data.add_argument("--val-windows", type=int, default=512, metavar="N",
                      help="validation uses at most N evenly spaced windows; 0 = every window, "
                           "i.e. the whole validation split, the same bytes for any vocabulary "
                           "(default: %(default)s)")

    model = p.add_argument_group("model and optimisation")
    model.add_argument("--preset", choices=PRESETS, default="small",
                       help="model size (default: %(default)s)")
    model.add_argument("--context", type=int, default=None, metavar="T",
                       help="tokens per training window (default: the preset's window W)")
    model.add_argument("--batch-size", type=int, default=16, metavar="B",
                       help="windows per step and device (default: %(default)s)")
    model.add_argument("--lr", type=float, default=2e-3, help="peak learning rate "
                       "(default: %(default)s)")
    model.add_argument("--warmup", type=float, default=0.02, metavar="F",
                       help="share of the budget for linear warmup (default: %(default)s)")
    model.add_argument("--qat-start", type=float, default=0.2, metavar="F",
                       help="fake-quant is on for the last F of the budget (default: "
                            "%(default)s; 0 = never, the export then calibrates)")
    model.add_argument("--seed", type=int, default=0, help="default: %(default)s")

    budget = p.add_argument_group("budget")
    budget.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                        help=f"training time budget (default: {DEFAULT_MAX_TIME_S:.0f} s when "
                             "--max-steps is not given either)")
    budget.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="optimizer step budget")
    budget.add_argument("--val-every", type=int, default=200, metavar="N",
                        help="validate and checkpoint every N steps (default: %(default)s)")
    budget.add_argument("--patience", type=int, default=8, metavar="N",
                        help="stop after N validations without improvement (default: "
                             "%(default)s; 0 = never)")

    run = p.add_argument_group("run")
    run.add_argument("--runs-dir", default="runs", metavar="DIR",
                     help="where run dirs go (default: %(default)s/)")
    run.add_argument("--name", default=None,
                     help="run name (default: CORPUS-PRESET-VOCAB, with -2, -3, ... appended "
                          "when taken; an explicit name that is taken is an error)")
    run.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                     help="continue from the last checkpoint of the run named by --name "
                          "(or of RUN: a run dir or a .ckpt); raise --max-steps/--max-time "
                          "to train further")
    run.add_argument("--out", default=None, metavar="PATH",
                     help="exported checkpoint path (default: RUN_DIR/NAME-<sha8>.tzm)")
    run.add_argument("--wandb", action="store_true",
                     help="also log to wandb (offline unless WANDB_MODE says otherwise)")
    run.add_argument("--wandb-project", default="tinyzip", metavar="NAME",
                     help="default: %(default)s")
    run.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch CPU threads (default: torch's choice)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    light = p.add_argument_group("Lightning pass-through")
    light.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (default: auto)")
    light.add_argument("--devices", default="auto", help="default: auto")
    light.add_argument("--strategy", default="auto", help="e.g. ddp (default: auto)")
    light.add_argument("--num-nodes", type=int, default=1, help="default: 1")
    light.add_argument("--precision", default=None,
                       help="default: bf16-mixed on GPU, 32-true otherwise")
    return p


def main(argv: list[str] | None = None, *, catch_errors: bool = False) -> int:
    """Run ``tinyzip train``; returns the exit status.

    Errors are raised as ``TinyzipError`` for ``tinyzip/cli.py`` to report; with
    ``catch_errors`` (the ``train.py`` shim) they are printed as one line instead.
    """
    if not catch_errors:
        return _main(argv)
    try:
        return _main(argv)
    except TinyzipError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    explicit_budget = args.max_time is not None or args.max_steps is not None
    if not explicit_budget:
        args.max_time = DEFAULT_MAX_TIME_S
    if not 0 <= args.primer_bytes <= MAX_PRIMER_BYTES:
        raise UsageError(f"--primer-bytes must be in 0..{MAX_PRIMER_BYTES}, got {args.primer_bytes}")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    run_dir, resuming, saved = _resolve_run_dir(args)
    rank0 = _launch_rank() == 0
    log = _Log(enabled=rank0)

    # --- data ---------------------------------------------------------------------------
    from tinyzip.data.corpus import find_corpus
    from tinyzip.data.split import SplitConfig, sample_blocks, split_corpus
    from tinyzip.data.tokenizer import BpeTokenizer, ByteTokenizer, load_tokenizer
    from tinyzip.data.tokens import build_token_files

    source: Any = args.corpus[0] if len(args.corpus) == 1 else args.corpus
    corpus = find_corpus(source, include_hidden=args.include_hidden)
    raw_sizes = [f.raw_bytes() for f in corpus.files]
    log(f"corpus: {len(corpus.files)} files, {sum(raw_sizes) / 1e6:.2f} MB "
        f"({corpus.summary().disk_bytes / 1e6:.2f} MB on disk)")
    for s in corpus.skipped[:20]:
        log(f"  skipped {s.rel}: {s.reason}")
    if len(corpus.skipped) > 20:
        log(f"  ... and {len(corpus.skipped) - 20} more skipped")
    if saved:  # the run's split, so validation stays the same bytes
        split_cfg = SplitConfig(val_fraction=saved["split"]["val_fraction"],
                                holdout=tuple(saved["split"]["holdout"]))
    else:
        split_cfg = SplitConfig(val_fraction=args.val_fraction, holdout=tuple(args.holdout))
    split = split_corpus(corpus, split_cfg, raw_sizes=raw_sizes)
    log(f"split: {split.train_bytes / 1e6:.2f} MB train, {split.val_bytes / 1e6:.2f} MB "
        f"validation")

    tok_path = run_dir / "tokenizer.json"
    vocab = saved["vocab"] if saved else args.vocab
    if tok_path.exists():
        tokenizer = load_tokenizer(tok_path)
    elif vocab == "bpe":
        t0 = time.monotonic()
        tokenizer = BpeTokenizer.train(sample_blocks(split.train, max_bytes=64 << 20),
                                       vocab_size=args.vocab_size)
        log(f"bpe: {tokenizer.vocab_size} symbols learned in {time.monotonic() - t0:.1f} s")
    else:
        tokenizer = ByteTokenizer()
    if rank0:
        tokenizer.save(tok_path)
    t0 = time.monotonic()
    store = build_token_files(corpus, split, tokenizer, run_dir / "tokens",
                              log=_Throttled(log, seconds=10.0))
    log(f"tokens: {len(store.train):,} train, {len(store.val):,} validation "
        f"({store.train.n_bytes / max(1, len(store.train)):.2f} bytes/token, "
        f"{time.monotonic() - t0:.1f} s)")

    # --- model and trainer --------------------------------------------------------------
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, Logger
    from tinyzip.model.config import ModelConfig
    from tinyzip.train.callbacks import QatAwareEarlyStopping
    from tinyzip.train.module import TinyzipModule, TokenDataModule, TrainConfig

    if saved:
        # The architecture comes from the run, never from today's defaults; only the
        # budget may change (raise it to train further).
        model_config = ModelConfig.from_dict(saved["model_config"])
        base = saved["train_config"]
        if explicit_budget:
            base = {**base, "max_steps": args.max_steps, "max_time_s": args.max_time}
        train_config = TrainConfig(**base)
    else:
        try:
            model_config = ModelConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        train_config = TrainConfig(
            batch_size=args.batch_size, context=args.context or model_config.window, lr=args.lr,
            warmup=args.warmup, qat_start=args.qat_start, max_steps=args.max_steps,
            max_time_s=args.max_time, seed=args.seed,
        )
    if model_config.vocab_size != tokenizer.vocab_size:
        raise UsageError(f"{tok_path} has {tokenizer.vocab_size} symbols but the run's model "
                         f"has {model_config.vocab_size}")
    if len(store.train) < train_config.context + 1:
        raise UsageError(f"training split has {len(store.train)} tokens, fewer than one window "
                         f"of {train_config.context + 1}: use a larger corpus or a smaller "
                         "--context")
    preset = saved["preset"] if saved else args.preset
    if rank0:
        _write_json(run_dir / "run.json", {
            "name": run_dir.name, "preset": preset, "vocab": vocab,
            "corpus": corpus.summary().to_dict(), "split": split_cfg.to_dict(),
            "model_config": model_config.to_dict(), "train_config": train_config.to_dict(),
        })

    L.seed_everything(train_config.seed, verbose=False)
    module = TinyzipModule(model_config.to_dict(), train_config.to_dict(),
                           [len(b) for b in tokenizer.id_to_bytes()])
    datamodule = TokenDataModule(run_dir / "tokens", batch_size=train_config.batch_size,
                                 context=train_config.context, seed=train_config.seed,
                                 val_windows=args.val_windows or None)
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="csv")]
    if args.wandb:
        loggers.append(_wandb_logger(args, run_dir))
    ckpt_dir = run_dir / "checkpoints"
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, save_top_k=0,
                        every_n_train_steps=args.val_every, save_on_exception=True),
    ]
    if args.patience > 0:
        callbacks.append(QatAwareEarlyStopping(monitor="val_bpb", mode="min",
                                               patience=args.patience, check_finite=True))
    if not args.no_progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    precision: Any = args.precision or ("bf16-mixed" if _uses_gpu(args.accelerator)
                                        else "32-true")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*`isinstance\(treespec, LeafSpec\)`.*")
    # validation sums are reduced across ranks by the module itself before logging
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed.*")
    trainer = L.Trainer(
        accelerator=args.accelerator, devices=_devices(args.devices), strategy=args.strategy,
        num_nodes=args.num_nodes, precision=precision,
        max_steps=train_config.max_steps or -1,
        max_time=(timedelta(seconds=train_config.max_time_s)
                  if train_config.max_time_s is not None else None),
        val_check_interval=args.val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, gradient_clip_val=1.0,
        log_every_n_steps=max(1, min(50, args.val_every // 4)),
        logger=loggers, callbacks=callbacks, default_root_dir=str(run_dir),
        enable_progress_bar=not args.no_progress, enable_model_summary=False,
        # the data module shards validation itself (exact sums, no padded repeats)
        use_distributed_sampler=False,
    )
    ckpt_path = ckpt_dir / "last.ckpt"
    if resuming and not ckpt_path.exists():
        raise UsageError(f"nothing to resume: {ckpt_path} does not exist")
    if resuming:
        log(f"resuming {run_dir} from {ckpt_path}")
    os.environ[RUN_DIR_ENV] = str(run_dir)
    t_fit = time.monotonic()
    try:
        trainer.fit(module, datamodule=datamodule,
                    ckpt_path=str(ckpt_path) if resuming else None)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
    fit_s = time.monotonic() - t_fit
    # Whatever stopped training (steps, time, early stop), --resume starts from here.
    # Both calls are collective under DDP: every rank makes them.
    trainer.save_checkpoint(str(ckpt_path), weights_only=False)
    val_metrics = trainer.validate(module, datamodule=datamodule, verbose=False)
    val_bpb = float(val_metrics[0]["val_bpb"]) if val_metrics else float("nan")
    if not trainer.is_global_zero:
        return 0

    # --- export -------------------------------------------------------------------------
    import numpy as np
    from tinyzip.model.export import export
    from tinyzip.model.primer import build_primer

    export_rows = _export_rows(store, train_config.context, max_rows=64)
    # Used only if fake-quant never ran (--qat-start 0, or stopped early before it).
    calib = store.train.sample_windows(np.random.default_rng(train_config.seed), 32,
                                       train_config.context)
    meta = {
        "name": run_dir.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": tokenizer.checkpoint_spec(),
        "corpus": corpus.summary().to_dict(),
        "split": split_cfg.to_dict(),
        "training": {
            "preset": preset, "vocab": vocab, "steps": trainer.global_step,
            "seconds": round(module.elapsed_s, 1), "train_config": train_config.to_dict(),
            "tokens_seen": trainer.global_step * train_config.batch_size
            * train_config.context * trainer.world_size,
            "val_bpb": val_bpb, "qat": module.model.quant_enabled,
            "val_bytes": store.val.n_bytes,
        },
    }
    out_given = args.out is not None
    out = Path(args.out) if out_given else run_dir / f"{run_dir.name}.tzm"
    out.parent.mkdir(parents=True, exist_ok=True)
    module.model.eval()
    # cm's primer, from the training split
    primer = build_primer(corpus.files, args.primer_bytes, split_cfg) if vocab == "byte" else b""
    checkpoint = export(module.model, tokenizer_table=tokenizer.id_to_bytes(), meta=meta,
                        path=out, calib_tokens=calib, val_tokens=export_rows, primer=primer)
    if not out_given:  # STYLE.md: the id prefix in the name, as CompressAI does
        named = out.with_name(f"{run_dir.name}-{checkpoint.model_id.hex()[:8]}.tzm")
        os.replace(out, named)
        out = named
    bpb = checkpoint.meta.get("bpb", {})
    summary = {
        "run_dir": str(run_dir), "checkpoint": str(out), "checkpoint_bytes": checkpoint.n_bytes,
        "model_id": checkpoint.model_id.hex(), "steps": trainer.global_step,
        "resumed_from_step": module.resumed_step, "fit_seconds": round(fit_s, 1),
        "val_bpb": val_bpb, "export_bpb": bpb, "preset": preset, "vocab": vocab,
        "vocab_size": tokenizer.vocab_size, "n_params": model_config.n_params,
    }
    _write_json(run_dir / "summary.json", summary)
    engine = bpb.get("engine")
    print(f"{out}  {checkpoint.n_bytes:,} bytes  val bpb {val_bpb:.4f}"
          + (f"  engine bpb {engine:.4f}" if engine is not None else "")
          + f"  ({trainer.global_step} steps, {fit_s:.0f} s)")
    return 0


class _Log:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"{PROG}: {msg}", file=sys.stderr)


class _Throttled:
    """Passes on at most one message per ``seconds``: progress for a long tokenisation
    without a line per file."""

    def __init__(self, log: _Log, seconds: float) -> None:
        self.log, self.seconds, self.last = log, seconds, time.monotonic()

    def __call__(self, msg: str) -> None:
        now = time.monotonic()
        if now - self.last >= self.seconds:
            self.log(msg)
            self.last = now


def _default_name(args: argparse.Namespace) -> str:
    first = args.corpus[0]
    base = Path(re.split(r"[*?\[]", first)[0] or ".").resolve()
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", base.name or "corpus").strip("-.") or "corpus"
    vocab = "byte" if args.vocab == "byte" else f"bpe{args.vocab_size}"
    return f"{label}-{args.preset}-{vocab}"


def _launch_rank() -> int:
    """This process's global rank as set by an external launcher (torchrun, SLURM, or
    Lightning for the ranks it spawns); 0 for a plain start."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    node, local = os.environ.get("NODE_RANK", "0"), os.environ.get("LOCAL_RANK", "0")
    return 0 if node in ("", "0") and local in ("", "0") else 1


def _multi_process_launch() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 or "SLURM_PROCID" in os.environ


def _resolve_run_dir(args: argparse.Namespace) -> tuple[Path, bool, dict[str, Any] | None]:
    """(run dir, resuming from its checkpoint, its saved run.json or None)."""
    env = os.environ.get(RUN_DIR_ENV)
    if env:  # a rank launched by Lightning: rank 0 already chose and prepared the dir
        run_dir = Path(env)
        return run_dir, args.resume is not None, _read_run(run_dir)
    runs = Path(args.runs_dir)
    name = args.name or _default_name(args)
    if args.resume is not None:
        target = Path(args.resume) if args.resume else runs / name
        if target.suffix == ".ckpt":
            target = target.parent.parent
        saved = _read_run(target)
        if saved is None:
            raise UsageError(f"nothing to resume: {target / 'run.json'} does not exist")
        return target, True, saved
    run_dir = runs / name
    if _launch_rank() != 0:
        # Started by torchrun/SLURM beside rank 0, which prepares runs/NAME (a shared
        # filesystem is assumed): wait for its run.json rather than making another dir.
        deadline = time.monotonic() + 3600
        while (saved := _read_run(run_dir)) is None:
            if time.monotonic() > deadline:
                raise UsageError(f"rank 0 never wrote {run_dir / 'run.json'}")
            time.sleep(2)
        return run_dir, False, saved
    if args.name is not None or _multi_process_launch():
        # An explicit name (and every multi-process launch) means exactly that dir.
        if run_dir.exists() and any(run_dir.iterdir()):
            raise UsageError(f"run dir {run_dir} exists: pass --resume to continue it, or "
                             "another --name")
    else:
        n = 2
        while run_dir.exists() and any(run_dir.iterdir()):
            run_dir = runs / f"{name}-{n}"
            n += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False, None


def _read_run(run_dir: Path) -> dict[str, Any] | None:
    try:
        saved: dict[str, Any] = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        return saved
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise UsageError(f"{run_dir / 'run.json'} is damaged: {exc}") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def _devices(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _uses_gpu(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    if accelerator != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def _wandb_logger(args: argparse.Namespace, run_dir: Path) -> Any:
    # Offline unless the user asked otherwise: no network surprise, `wandb sync` later.
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    offline = os.environ["WANDB_MODE"] in ("offline", "dryrun", "disabled")
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=args.wandb_project, name=run_dir.name, save_dir=str(run_dir),
                       offline=offline)


def _export_rows(store: Any, context: int, *, max_rows: int) -> Any:
    """(N, L) full validation chunks for export's bpb check (no padding: each row is coded
    from BOS as the engine codes a stream)."""
    import numpy as np

    length = min(context, len(store.val))
    rows = [w.tokens for w in store.val.sequential_windows(length) if w.n_valid == length]
    if len(rows) > max_rows:
        idx = np.unique(np.linspace(0, len(rows) - 1, max_rows).round().astype(int))
        rows = [rows[i] for i in idx]
    return np.stack(rows)
