"""The codec registry: every compressor the bench runs, behind one ``bytes -> bytes`` protocol.

As in language_modeling_is_compression's ``compressors/compressor.py``, tinyzip sits in the
same registry as gzip and xz, so one loop measures them all and no compressor gets special
treatment. Each codec carries the bytes a decoder needs besides the payload (``model_bytes``:
tinyzip's checkpoint, zstd's trained dictionary; 0 for the classic codecs, whose model is code).

Nothing here imports torch; the optional codecs (brotli, pyppmd, external binaries) are only
registered when their library or program is present, and ``registry()`` says which were skipped.
"""

from __future__ import annotations

import bz2
import gzip
import inspect
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyzip.errors import UsageError

#: zstd's own default dictionary size (``zstd --train`` uses 110 KiB).
DEFAULT_DICT_BYTES = 112_640

#: Samples handed to ``zstandard.train_dictionary`` are cut to this size at line ends:
#: the trainer wants many small samples, not a few multi-megabyte files.
DICT_SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class Codec:
    """One compressor as the bench sees it.

    ``decompress(compress(x)) == x`` is what the bench checks; a codec that breaks it is
    reported with ``roundtrip: false``, never raised.
    """

    name: str
    """Row label in every report, e.g. ``xz -9e``."""
    compress: Callable[[bytes], bytes]
    """Raw bytes to payload bytes; the payload must be all a decoder needs besides the model."""
    decompress: Callable[[bytes], bytes]
    """Payload bytes back to raw bytes."""
    model_bytes: int = 0
    """Bytes a decoder needs besides the payload (checkpoint, dictionary); 0 if only code."""
    kind: str = "classic"
    """``classic``, ``tinyzip``, ``external`` or ``generic``: grouping in reports and plots."""
    note: str = ""
    """Free text shown in the Markdown report (settings, caveats)."""


@dataclass
class Registry:
    """Ordered codecs by name, plus why optional ones were left out."""

    codecs: dict[str, Codec] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, codec: Codec) -> None:
        if codec.name in self.codecs:
            raise UsageError(f"codec {codec.name!r} registered twice")
        self.codecs[codec.name] = codec

    def select(self, names: Sequence[str] | None) -> list[Codec]:
        """The codecs named in ``names`` (prefix ``gzip`` matches ``gzip -9``), or all."""
        if not names:
            return list(self.codecs.values())
        chosen: list[Codec] = []
        for wanted in names:
            hits = [
                c
                for c in self.codecs.values()
                if c.name == wanted or c.name.split()[0] == wanted
            ]
            if not hits:
                if wanted in self.skipped or any(
                    k.split()[0] == wanted for k in self.skipped
                ):
                    continue  # asked for, but not available here: listed in meta.skipped
                known = ", ".join(sorted({c.name.split()[0] for c in self.codecs.values()}))
                raise UsageError(f"--codecs: unknown codec {wanted!r} (known: {known})")
            chosen.extend(c for c in hits if c not in chosen)
        return chosen


# --- classic codecs, all from the standard library or small wheels ---------------------------


def _classic() -> list[Codec]:
    codecs = [
        Codec("gzip -9", lambda d: gzip.compress(d, compresslevel=9, mtime=0), gzip.decompress),
        Codec("bzip2 -9", lambda d: bz2.compress(d, 9), bz2.decompress),
        Codec(
            "xz -9e",
            lambda d: lzma.compress(d, preset=9 | lzma.PRESET_EXTREME),
            lzma.decompress,
        ),
    ]
    import zstandard

    def zstd_compress(d: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=19).compress(d)

    def zstd_decompress(b: bytes) -> bytes:
        # The frame header holds the content size, so no max_output_size is needed.
        return zstandard.ZstdDecompressor().decompress(b)

    codecs.append(Codec("zstd -19", zstd_compress, zstd_decompress))
    return codecs


def _brotli() -> Codec:
    import brotli

    return Codec("brotli -q 11", lambda d: brotli.compress(d, quality=11), brotli.decompress)


#: PPMd variant I (PPMd8, as in 7-Zip's .ppmd and RAR), order 6, 64 MiB. Variant H through
#: ``pyppmd.decompress`` has no end mark and returns a truncated prefix; variant I at high
#: orders has been seen to stop early too, so PPMd is verified like every other codec.
PPMD_ORDER = 6
PPMD_MEM = 64 << 20


def _ppmd() -> Codec:
    import pyppmd

    def compress(d: bytes) -> bytes:
        return pyppmd.compress(d, max_order=PPMD_ORDER, mem_size=PPMD_MEM, variant="I")

    def decompress(b: bytes) -> bytes:
        out = pyppmd.decompress(b, max_order=PPMD_ORDER, mem_size=PPMD_MEM, variant="I")
        return out if isinstance(out, bytes) else out.encode()

    return Codec(f"ppmd -o{PPMD_ORDER}", compress, decompress, note="PPMd var.I, 64 MiB")


# --- zstd with a dictionary trained on the user's training data -----------------------------


def dictionary_samples(paths: Iterable[Path], sample_bytes: int = DICT_SAMPLE_BYTES) -> list[bytes]:
    """Cut every file into samples of about ``sample_bytes``, ending at a newline if any."""
    samples: list[bytes] = []
    for path in paths:
        data = path.read_bytes()
        start = 0
        while start < len(data):
            end = min(start + sample_bytes, len(data))
            if end < len(data):
                nl = data.rfind(b"\n", start, end)
                if nl > start:
                    end = nl + 1
            samples.append(data[start:end])
            start = end
    return samples


def zstd_dict_codec(samples: list[bytes], *, dict_bytes: int | None = None) -> Codec:
    """zstd -19 with a dictionary trained on ``samples``; the dictionary is its model bytes.

    ``dict_bytes`` defaults to zstd's 110 KiB, capped at a tenth of the training bytes
    (the trainer fails when the samples are not much larger than the dictionary).
    Raises UsageError when no dictionary can be trained.
    """
    import zstandard

    if not samples:
        raise UsageError("--dict-corpus: no files to train a dictionary on")
    if dict_bytes is None:
        dict_bytes = min(DEFAULT_DICT_BYTES, max(256, sum(map(len, samples)) // 10))
    try:
        typed: list[bytes | bytearray | memoryview] = list(samples)
        zdict = zstandard.train_dictionary(dict_bytes, typed)
    except zstandard.ZstdError as exc:
        raise UsageError(f"--dict-corpus: zstd could not train a dictionary: {exc}") from exc
    raw = zdict.as_bytes()

    def compress(d: bytes) -> bytes:
        return zstandard.ZstdCompressor(level=19, dict_data=zdict).compress(d)

    def decompress(b: bytes) -> bytes:
        return zstandard.ZstdDecompressor(dict_data=zdict).decompress(b)

    return Codec(
        "zstd -19 --dict",
        compress,
        decompress,
        model_bytes=len(raw),
        note=f"dictionary of {len(raw)} bytes trained on {len(samples)} samples",
    )


# --- external binaries, through temporary files ---------------------------------------------


@dataclass(frozen=True)
class ExternalTool:
    """How to drive one command-line compressor. ``{src}``/``{dst}`` are file paths."""

    name: str
    program: str
    compress_args: tuple[str, ...]
    decompress_args: tuple[str, ...]
    note: str = ""


#: Argument forms follow each program's usage text (paq8px v2xx, cmix v2x, zpaq 7.15). zpaq
#: writes an archive holding the file name, so its payload carries that small overhead.
EXTERNAL_TOOLS: tuple[ExternalTool, ...] = (
    ExternalTool("paq8px -8", "paq8px", ("-8", "{src}", "{dst}"), ("-d", "{src}", "{dst}")),
    ExternalTool("cmix", "cmix", ("-c", "{src}", "{dst}"), ("-d", "{src}", "{dst}")),
    ExternalTool(
        "zpaq -m5",
        "zpaq",
        ("a", "{dst}", "{src}", "-m5"),
        ("x", "{src}", "-to", "{dst}"),
        note="archive includes the stored file name",
    ),
)


def external_codec(tool: ExternalTool, executable: str) -> Codec:
    """Wrap a program that compresses file to file; raises RuntimeError if it fails."""

    def run(args: tuple[str, ...], src: Path, dst: Path) -> None:
        argv = [executable, *(a.format(src=src, dst=dst) for a in args)]
        proc = subprocess.run(argv, capture_output=True, check=False)
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{tool.program} exited {proc.returncode}: {tail[0]}")

    def compress(d: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="tzbench-") as tmp:
            src, dst = Path(tmp, "input"), Path(tmp, "output.bin")
            src.write_bytes(d)
            run(tool.compress_args, src, dst)
            return dst.read_bytes()

    def decompress(b: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="tzbench-") as tmp:
            src, dst = Path(tmp, "payload.bin"), Path(tmp, "restored")
            src.write_bytes(b)
            run(tool.decompress_args, src, dst)
            if dst.is_dir():  # zpaq's -to extracts the stored path under the folder
                files = [p for p in dst.rglob("*") if p.is_file()]
                if len(files) != 1:
                    raise RuntimeError(f"{tool.program} restored {len(files)} files, not 1")
                return files[0].read_bytes()
            return dst.read_bytes()

    return Codec(tool.name, compress, decompress, kind="external", note=tool.note)


# --- tinyzip itself --------------------------------------------------------------------------


def tinyzip_codec(
    model: str | os.PathLike[str] | None = None, options: dict[str, Any] | None = None
) -> Codec:
    """tinyzip through its public API, with ``model_bytes`` from ``tinyzip.model_bytes``."""
    import tinyzip

    opts = dict(options or {})
    params = inspect.signature(tinyzip.compress).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in opts:
        if key not in params and not takes_kwargs:
            raise UsageError(f"tinyzip.compress has no option {key!r} (for --{key})")
    n_model = int(tinyzip.model_bytes(model))
    label = "tinyzip" if model is None else f"tinyzip {Path(os.fspath(model)).name}"
    if opts:
        label += " " + " ".join(f"{k}={v}" for k, v in sorted(opts.items()))

    def compress(d: bytes) -> bytes:
        return tinyzip.compress(d, model, **opts)

    def decompress(b: bytes) -> bytes:
        return tinyzip.decompress(b, model)

    return Codec(label, compress, decompress, model_bytes=n_model, kind="tinyzip")


# --- the registry ----------------------------------------------------------------------------


def registry(
    *,
    tinyzip_model: str | os.PathLike[str] | None = None,
    tinyzip_options: dict[str, Any] | None = None,
    with_tinyzip: bool = True,
    dict_paths: Sequence[Path] = (),
    which: Callable[[str], str | None] = shutil.which,
) -> Registry:
    """Every codec available here, tinyzip last so the classic ones run first."""
    reg = Registry()
    for codec in _classic():
        reg.add(codec)
    if dict_paths:
        try:
            reg.add(zstd_dict_codec(dictionary_samples(dict_paths)))
        except UsageError as exc:
            reg.skipped["zstd -19 --dict"] = str(exc)
    else:
        reg.skipped["zstd -19 --dict"] = "no --dict-corpus given"
    for name, make in (("brotli -q 11", _brotli), (f"ppmd -o{PPMD_ORDER}", _ppmd)):
        try:
            reg.add(make())
        except ImportError as exc:
            reg.skipped[name] = f"not installed: {exc.name}"
    for tool in EXTERNAL_TOOLS:
        exe = which(tool.program)
        if exe:
            reg.add(external_codec(tool, exe))
        else:
            reg.skipped[tool.name] = f"{tool.program} not on PATH"
    if with_tinyzip:
        reg.add(tinyzip_codec(tinyzip_model, tinyzip_options))
    return reg
