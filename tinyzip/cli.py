"""The one command line: ``tinyzip``. Dispatch, file handling, and error-to-exit-code mapping.

Habits follow zstd and xz: compress is the default action, ``-d`` decompresses,
``-`` or no file means stdin to stdout, ``.tzp`` is added and stripped, inputs are
kept unless ``--rm``, outputs are never overwritten without ``-f`` and never left
half-written (a temporary name is renamed only when everything checked out).

This is the only module that catches TinyzipError, prints one line and exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

PROG = "tinyzip"
SUFFIX = ".tzp"

#: Subcommands implemented elsewhere: name -> (module, function taking argv, one-line help).
EXTERNAL_COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("tinyzip.model.info", "main", "print the card of a .tzm model checkpoint"),
    "train": ("tinyzip.train.cli", "main", "train a model on a corpus and export a .tzm"),
    "bench": ("tinyzip.bench", "main", "compare tinyzip with classic compressors on files"),
}
ARCHIVE_COMMANDS = {
    "compress": "compress files (the default action)",
    "decompress": "decompress .tzp archives (same as -d)",
    "test": "check .tzp archives without writing anything (same as -t)",
    "list": "show sizes, ratio and model of .tzp archives (same as -l)",
}

EXAMPLES = """\
examples:
  tinyzip app.log                  compress to app.log.tzp (app.log is kept)
  tinyzip -d app.log.tzp           decompress to app.log
  tinyzip < app.log > app.log.tzp  stdin to stdout (logrotate's compresscmd)
  tinyzip -d -c app.log.tzp | less decompress to stdout
  tinyzip -r logs/ --rm            compress every file under logs/, removing the originals
  tinyzip -m mylogs.tzm app.log    compress with a model trained by 'tinyzip train'
  tinyzip -m mylogs.tzm --adapt none app.log
                                   the checkpoint alone, no online learning (fast, frozen)
  tinyzip -m cm app.log            use the built-in adaptive model (no checkpoint)
  tinyzip list app.log.tzp         sizes, ratio, bits per byte and the model of an archive
  tinyzip test app.log.tzp         check an archive without writing anything

subcommands:
""" + "\n".join(
    f"  {name:<11}{text}"
    for name, text in [*ARCHIVE_COMMANDS.items()]
    + [(n, t[2]) for n, t in EXTERNAL_COMMANDS.items()]
) + """

environment:
  TINYZIP_CACHE_DIR  where cm's state after a model's primer is kept between runs, so
                     that only a machine's first archive per model learns it (~1 s);
                     default $XDG_CACHE_HOME/tinyzip or ~/.cache/tinyzip, about 110 MB
                     a model; 'off' keeps nothing. Archives are the same either way.

exit status: 0 success, 1 error (one line on stderr: 'tinyzip: FILE: reason'), 2 warning.
"""


class CliError(Exception):
    """A failure about one file (or the command line) that the CLI reports and goes on from."""


def _build_parser(action: str | None) -> argparse.ArgumentParser:
    prog = PROG if action is None else f"{PROG} {action}"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Lossless compression with a small domain transformer and online context "
        "mixing. Without a subcommand it compresses, like gzip/xz/zstd.",
        epilog=EXAMPLES if action is None else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("files", nargs="*", metavar="FILE", help="input files; none or '-' means stdin")
    if action is None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("-z", "--compress", dest="action", action="store_const", const="compress",
                          help="compress (the default)")
        mode.add_argument("-d", "--decompress", dest="action", action="store_const",
                          const="decompress", help="decompress")
        mode.add_argument("-t", "--test", dest="action", action="store_const", const="test",
                          help="test archive integrity")
        mode.add_argument("-l", "--list", dest="action", action="store_const", const="list",
                          help="list archive contents")
    parser.add_argument("-c", "--stdout", action="store_true", help="write to standard output")
    parser.add_argument("-o", "--output", metavar="OUT", help="output file (one input only)")
    keep = parser.add_mutually_exclusive_group()
    keep.add_argument("-k", "--keep", action="store_true", default=True,
                      help="keep input files (the default)")
    keep.add_argument("--rm", action="store_true", help="remove input files after success")
    parser.add_argument("-f", "--force", action="store_true",
                        help="overwrite outputs; write compressed data to a terminal")
    parser.add_argument("-r", "--recursive", action="store_true", help="operate on directories")
    parser.add_argument("-T", "--threads", type=int, metavar="N",
                        help="threads for the model: its matrix products and, beside cm, a "
                        "helper thread running the model while cm codes (1: none; default: all "
                        "cores; archives are the same whatever N)")
    parser.add_argument("-m", "--model", metavar="MODEL",
                        help="model: a .tzm checkpoint trained on your logs (path or shipped "
                        "name), 'cm' (the built-in adaptive model, no checkpoint) or 'zstd' (no "
                        "model); default: the shipped default model (default-tiny-24k: 106 KB, a tiny "
                        "byte-level transformer trained on logs and a primer of logs for cm: "
                        "'tinyzip info default-tiny-24k'), "
                        "else cm. 'cm+CKPT' is CKPT "
                        "at --adapt max. When decompressing: where to find the archive's "
                        "checkpoint if it is not shipped")
    parser.add_argument("--adapt", choices=("none", "fast", "max"), default=None,
                        help="online learning while coding (recorded in the archive: decoding "
                        "needs no flag). 'max' (default) mixes a byte-level checkpoint's "
                        "predictions into cm, which learns the file as it goes: the best ratio; "
                        "about 95 KB/s compressing and 65-70 decompressing on 2 cores with the "
                        "default model on files of 150-600 KB, its primer included: cm learns "
                        "it first, about 1.3 s each way on a machine's first archive (there "
                        "65 and 50 KB/s), which keeps the result in TINYZIP_CACHE_DIR for "
                        "later ones; a small checkpoint is slower (one engine step per byte). "
                        "'fast': the same with a lighter cm, ~13%% "
                        "larger, ~20%% faster compressing (decompressing is bound by the "
                        "checkpoint). 'none': the checkpoint alone, frozen: fast with many "
                        "streams, poor on data unlike its training data; the only level for BPE "
                        "checkpoints. Without a checkpoint cm is all online learning: 'max', or "
                        "'fast' (~1.9x faster, ~14%% larger)")
    parser.add_argument("--streams", type=int, default=None, metavar="B",
                        help="most chunks coded side by side per frame (default: the model's "
                        "choice, 1 for cm and cm+checkpoint, 32 for a checkpoint alone): fewer "
                        "compresses better, more is faster for batched models")
    parser.add_argument("--frame-size", type=_size, default=None, metavar="BYTES",
                        help="raw bytes per frame, e.g. 1M (default 512K; bounds memory)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no summaries or progress")
    parser.add_argument("-v", "--verbose", action="store_true", help="a summary line per file")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tinyzip")
    except PackageNotFoundError:
        return "unknown"


def _size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = int(t[: len(t) - len(unit)]) * units[unit]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from exc
    return value


class Console:
    """Messages on stderr: summaries, progress bars and the one-line errors."""

    def __init__(self, quiet: bool, verbose: bool) -> None:
        self.tty = sys.stderr.isatty()
        self.quiet = quiet
        self.summaries = (verbose or self.tty) and not quiet
        self.verbose = verbose and not quiet

    def error(self, name: str | None, message: str) -> None:
        prefix = f"{PROG}: {name}: " if name else f"{PROG}: "
        print(prefix + message.splitlines()[0] if message else prefix + "error", file=sys.stderr)

    def info(self, message: str) -> None:
        if self.summaries:
            print(message, file=sys.stderr)

    def progress(self, name: str, total: int | None) -> Callable[[int], None] | None:
        """A progress callback drawing a bar on stderr, when stderr is a terminal."""
        if not self.tty or self.quiet:
            return None
        start = time.monotonic()
        last = [0.0]

        def report(done: int) -> None:
            now = time.monotonic()
            if now - last[0] < 0.2:
                return
            last[0] = now
            rate = done / max(now - start, 1e-9) / 1e3
            if total:
                frac = min(done / total, 1.0)
                bar = "#" * int(frac * 30)
                text = f"\r{name[-30:]}: [{bar:<30}] {frac:6.1%} {rate:8.1f} KB/s"
            else:
                text = f"\r{name[-30:]}: {done / 1e6:10.2f} MB {rate:8.1f} KB/s"
            print(text, end="", file=sys.stderr, flush=True)

        return report

    def clear_progress(self) -> None:
        if self.tty and not self.quiet:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL_COMMANDS:
        return _run_external(argv[0], argv[1:])
    action = None
    if argv and argv[0] in ARCHIVE_COMMANDS:
        action, argv = argv[0], argv[1:]
    parser = _build_parser(action)
    args = parser.parse_args(argv)
    args.action = action or args.action or "compress"
    if args.adapt is not None and args.action != "compress":
        parser.error("--adapt applies to compression; an archive records its own level")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("-T/--threads must be >= 1")
        # Before numpy loads (the archive modules import it lazily below).
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    console = Console(args.quiet, args.verbose)
    try:
        return _run_archive_command(args, console)
    except KeyboardInterrupt:
        console.clear_progress()
        console.error(None, "interrupted")
        return 130


def _run_external(name: str, argv: list[str]) -> int:
    import importlib

    from tinyzip.errors import TinyzipError

    module_name, func_name, _ = EXTERNAL_COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = " (install the extra: pip install 'tinyzip[train]')" if name == "train" else ""
        print(f"{PROG} {name}: unavailable: {exc}{hint}", file=sys.stderr)
        return 1
    try:
        return int(getattr(module, func_name)(argv) or 0)
    except TinyzipError as exc:
        print(f"{PROG} {name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG} {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours, stop quietly.
        _silence_stdout()
        return 0


def _expand(files: list[str], recursive: bool, action: str) -> Iterator[str]:
    for name in files or ["-"]:
        path = Path(name)
        if name != "-" and path.is_dir():
            if not recursive:
                raise CliError(f"{name}: is a directory (use -r)")
            for sub in sorted(path.rglob("*")):
                if sub.is_file() and not sub.is_symlink():
                    # Compressing skips archives; the other actions take archives only.
                    if (sub.suffix == SUFFIX) == (action != "compress"):
                        yield str(sub)
        else:
            yield name


def _run_archive_command(args: argparse.Namespace, console: Console) -> int:
    try:
        names = list(_expand(args.files, args.recursive, args.action))
    except CliError as exc:
        console.error(None, str(exc))
        return 1
    if args.output and len(names) > 1:
        console.error(None, "-o/--output takes one input file only")
        return 1
    if args.action == "list":
        return _list(names, args, console)
    status = 0
    for name in names:
        try:
            code = _process_one(name, args, console)
        except CliError as exc:
            console.clear_progress()
            console.error(name if name != "-" else "(stdin)", str(exc))
            code = 1
        status = max(status, code)
    return status


def _describe_error(exc: BaseException) -> str:
    from tinyzip.errors import TinyzipError

    if isinstance(exc, TinyzipError):
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory"
    return f"internal error: {type(exc).__name__}: {exc} (set TINYZIP_DEBUG=1 for a traceback)"


def _process_one(name: str, args: argparse.Namespace, console: Console) -> int:
    """Compress, decompress or test one input. Returns the exit status for it."""
    from tinyzip.errors import TinyzipError

    action = args.action
    from_stdin = name == "-"
    if action == "compress" and not from_stdin and name.endswith(SUFFIX) and not args.force:
        console.error(name, f"already has {SUFFIX} suffix -- ignored")
        return 2
    out_path = _output_path(name, args, action)
    to_stdout = out_path is None and action != "test"
    if action == "compress" and to_stdout and sys.stdout.isatty() and not args.force:
        raise CliError("compressed data not written to a terminal (use -f to force)")
    if action != "compress" and from_stdin and sys.stdin.isatty():
        raise CliError("compressed data not read from a terminal")
    if out_path is not None and out_path.exists() and not args.force:
        raise CliError(f"{out_path} already exists; use -f to overwrite")

    src: BinaryIO
    size: int | None = None
    if from_stdin:
        src = sys.stdin.buffer
    else:
        try:
            src = open(name, "rb")  # noqa: SIM115 - closed in finally
            size = os.fstat(src.fileno()).st_size
        except OSError as exc:
            raise CliError(exc.strerror or str(exc)) from exc
    label = "(stdin)" if from_stdin else name
    tmp: Path | None = None
    start = time.monotonic()
    try:
        if action == "test" or to_stdout:
            dst: BinaryIO = _NullSink() if action == "test" else sys.stdout.buffer
            header, n_in, n_out = _run_codec(action, src, dst, args, console, label, size)
            if to_stdout:
                sys.stdout.buffer.flush()
        else:
            assert out_path is not None
            tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
            with open(tmp, "xb") as dst_file:
                header, n_in, n_out = _run_codec(action, src, dst_file, args, console, label, size)
                dst_file.flush()
                os.fsync(dst_file.fileno())
            if not from_stdin:
                _copy_metadata(name, tmp)
            os.replace(tmp, out_path)
            tmp = None
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours, stop quietly.
        _silence_stdout()
        return 1
    except (TinyzipError, OSError, MemoryError, ValueError, OverflowError, RuntimeError) as exc:
        if os.environ.get("TINYZIP_DEBUG"):
            raise
        console.clear_progress()
        console.error(label, _describe_error(exc))
        return 1
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
        if not from_stdin:
            src.close()
    console.clear_progress()
    elapsed = max(time.monotonic() - start, 1e-9)
    _summary(console, action, label, out_path, n_in, n_out, elapsed)
    if args.rm and not from_stdin and action != "test":
        os.unlink(name)
    return 0


def _output_path(name: str, args: argparse.Namespace, action: str) -> Path | None:
    """Where one input's output goes: None for stdout (or nowhere, for test)."""
    if action == "test":
        return None
    if args.stdout or (args.output in (None, "-") and name == "-") or args.output == "-":
        return None
    if args.output:
        return Path(args.output)
    if action == "compress":
        return Path(name + SUFFIX)
    if not name.endswith(SUFFIX):
        raise CliError(f"unknown suffix (expected {SUFFIX}) -- use -o or -c")
    return Path(name[: -len(SUFFIX)])


class _NullSink:
    """A write-only sink for ``test``: counts bytes, keeps nothing."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)


class _CountingReader:
    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        self.n += len(data)
        return data


class _CountingWriter:
    def __init__(self, dst: Any) -> None:
        self.dst = dst
        self.n = 0

    def write(self, data: bytes) -> int:
        self.dst.write(data)
        self.n += len(data)
        return len(data)


def _run_codec(
    action: str,
    src: BinaryIO,
    dst: Any,
    args: argparse.Namespace,
    console: Console,
    label: str,
    size: int | None,
) -> tuple[Any, int, int]:
    import tinyzip.api as api
    from tinyzip.coder.archive import DEFAULT_FRAME_SIZE

    reader = _CountingReader(src)
    writer = _CountingWriter(dst)
    if action == "compress":
        api.compress_stream(
            reader,  # type: ignore[arg-type]
            writer,  # type: ignore[arg-type]
            args.model,
            adapt=args.adapt,
            streams=args.streams,
            frame_size=args.frame_size or DEFAULT_FRAME_SIZE,
            original_size=size,
            on_progress=console.progress(label, size),
        )
        return None, reader.n, writer.n
    header = api.decompress_stream(
        reader,  # type: ignore[arg-type]
        writer,  # type: ignore[arg-type]
        args.model,
        on_progress=console.progress(label, None),
    )
    return header, reader.n, writer.n


def _copy_metadata(src_name: str, dst: Path) -> None:
    try:
        st = os.stat(src_name)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.chmod(dst, st.st_mode & 0o777)
    except OSError:
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass


def _summary(
    console: Console,
    action: str,
    label: str,
    out_path: Path | None,
    n_in: int,
    n_out: int,
    elapsed: float,
) -> None:
    if action == "compress":
        raw, packed = n_in, n_out
    else:
        raw, packed = n_out, n_in
    ratio = packed / raw if raw else 0.0
    bpb = 8 * packed / raw if raw else 0.0
    speed = raw / elapsed / 1e3
    if action == "test":
        console.info(f"{label}: OK ({packed} => {raw} bytes)")
        return
    target = str(out_path) if out_path is not None else "(stdout)"
    console.info(
        f"{label}: {ratio:7.2%} ({raw} => {packed} bytes, {bpb:.3f} bits/byte, "
        f"{speed:.1f} KB/s, {target})"
    )


def _list(names: list[str], args: argparse.Namespace, console: Console) -> int:
    from tinyzip.coder.archive import ArchiveReader
    from tinyzip.coder.container import ChunkMode, EndRecord
    from tinyzip.errors import TinyzipError
    from tinyzip.models import adapt_level

    status = 0
    rows = []
    for name in names:
        label = "(stdin)" if name == "-" else name
        try:
            if name == "-" and sys.stdin.isatty():
                raise CliError("compressed data not read from a terminal")
            src = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
            try:
                # Listing needs no model: resolve to None and only read the tables.
                reader = ArchiveReader(src, lambda desc, mid: None)
                header = reader.header
                packed = 0
                frames = 0
                modes = {m: 0 for m in ChunkMode}
                total = 0
                for record in reader.scan():
                    if isinstance(record, EndRecord):
                        total = record.total_raw
                        break
                    frames += 1
                    for chunk in record.chunks:
                        modes[chunk.mode] += chunk.raw_len
                packed = src.tell() if name != "-" else 0
                if name != "-":
                    packed = os.fstat(src.fileno()).st_size
            finally:
                if name != "-":
                    src.close()
        except (CliError, TinyzipError, OSError) as exc:
            console.error(label, _describe_error(exc) if not isinstance(exc, CliError) else str(exc))
            status = 1
            continue
        desc = header.descriptor
        model = desc.get("name_hint") or desc.get("name", "?")
        if desc.get("name") == "cm+transformer":
            model = f"cm+{model}"
        level = adapt_level(desc)
        if level and level != "max":
            model = f"{model} ({level})"
        share = ", ".join(
            f"{m.name.lower()} {100 * n / total:.0f}%" for m, n in modes.items() if n and total
        )
        rows.append((label, packed, total, frames, model, header.model_id.hex()[:16], share))
    if not rows:
        return status
    print(f"{'Compressed':>12} {'Uncompressed':>13} {'Ratio':>7} {'Bits/B':>7} {'Frames':>6}  "
          f"{'Model':<24} {'Model id':<16}  Chunks  Filename")
    for label, packed, total, frames, model, mid, share in rows:
        ratio = f"{packed / total:7.2%}" if total else "    n/a"
        bpb = f"{8 * packed / total:7.3f}" if total else "    n/a"
        print(f"{packed:>12} {total:>13} {ratio} {bpb} {frames:>6}  {model:<24} {mid:<16}  "
              f"{share or '-'}  {label}")
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
