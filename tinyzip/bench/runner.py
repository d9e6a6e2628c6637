"""Measure codecs on files and turn the measurements into report rows.

Every (codec, file) pair runs in a forked child where the platform has ``fork``: the child
compresses, decompresses and compares, so a codec that crashes, hangs in C, or returns the
wrong bytes is one row with ``roundtrip: false`` and an ``error``, never a dead bench. The
child also gives a clean memory figure: peak memory is ``ru_maxrss`` of the child (the
``resource`` module) minus its resident size when it started, i.e. what the codec's
compress + decompress added on top of the already loaded input, C libraries included; for
an external binary (paq8px, cmix, zpaq) the program's own peak RSS if that is larger.
Without ``fork`` (Windows) the pair runs in-process and peak memory comes from
``tracemalloc``, which sees Python and numpy allocations only.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tinyzip.bench.codecs import Codec

#: How peak memory is measured, recorded in the JSON ``meta``.
MEM_METHOD_FORK = (
    "resource.getrusage ru_maxrss of a forked child minus its RSS at start, "
    "or of the programs it ran (external binaries) if larger"
)
MEM_METHOD_TRACEMALLOC = "tracemalloc peak (Python and numpy allocations only)"


@dataclass
class Measurement:
    """One codec on one file."""

    compressor: str
    file: str
    raw_bytes: int
    payload_bytes: int | None
    """None when compression itself failed."""
    model_bytes: int
    compress_s: float | None
    decompress_s: float | None
    roundtrip: bool | None
    """True when decompress(compress(x)) == x; None only for ideal code lengths (generic LLM)."""
    peak_mem_bytes: int | None
    kind: str = "classic"
    error: str | None = None


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _maxrss_bytes(who: str = "self") -> int:
    """Peak RSS of this process, or (``who="children"``) of its largest waited-for child.

    A forked child starts with zeroed usage counters, so in the bench's child ``children``
    covers just the programs an external codec ran (paq8px, cmix, zpaq).
    """
    import resource
    import sys

    kind = resource.RUSAGE_CHILDREN if who == "children" else resource.RUSAGE_SELF
    peak = resource.getrusage(kind).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # Linux: KiB


def _run_pair(codec: Codec, data: bytes) -> dict[str, Any]:
    """Compress, decompress, compare; never raises. Peak memory is left to the caller."""
    out: dict[str, Any] = {
        "payload_bytes": None,
        "compress_s": None,
        "decompress_s": None,
        "roundtrip": False,
        "error": None,
    }
    try:
        t0 = time.perf_counter()
        payload = codec.compress(data)
        out["compress_s"] = time.perf_counter() - t0
        out["payload_bytes"] = len(payload)
    except Exception as exc:  # a failing codec is a row, not a crash
        out["error"] = f"compress: {type(exc).__name__}: {exc}"
        return out
    try:
        t0 = time.perf_counter()
        restored = codec.decompress(payload)
        out["decompress_s"] = time.perf_counter() - t0
    except Exception as exc:
        out["error"] = f"decompress: {type(exc).__name__}: {exc}"
        return out
    out["roundtrip"] = bytes(restored) == data
    if not out["roundtrip"]:
        out["error"] = (
            f"decompressed {len(restored)} bytes differ from the {len(data)} input bytes"
        )
    return out


def _read_all(fd: int, deadline: float | None) -> bytes | None:
    """Everything from ``fd`` until EOF, or None if ``deadline`` (perf_counter) passes first."""
    import select

    chunks: list[bytes] = []
    while True:
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _in_child(codec: Codec, data: bytes, timeout_s: float | None = None) -> dict[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report one JSON line, leave without cleanup handlers
        code = 0
        try:
            os.close(read_fd)
            rss0 = _rss_bytes()
            result = _run_pair(codec, data)
            own = max(0, _maxrss_bytes() - rss0) if rss0 else None
            ran = _maxrss_bytes("children")  # an external binary's memory is not our RSS
            result["peak_mem_bytes"] = max(own or 0, ran) if own is not None or ran else None
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(json.dumps(result).encode())
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = None if timeout_s is None else time.perf_counter() + timeout_s
    try:
        raw = _read_all(read_fd, deadline)
        if raw is None:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    if raw is None:
        return {
            "payload_bytes": None,
            "compress_s": None,
            "decompress_s": None,
            "roundtrip": False,
            "error": f"timed out after {timeout_s:g} s (--timeout)",
            "peak_mem_bytes": None,
        }
    if raw:
        try:
            loaded: dict[str, Any] = json.loads(raw)
            return loaded
        except json.JSONDecodeError:
            pass
    why = (
        f"killed by signal {os.WTERMSIG(status)}"
        if os.WIFSIGNALED(status)
        else f"exited {os.WEXITSTATUS(status)} without a result"
    )
    return {
        "payload_bytes": None,
        "compress_s": None,
        "decompress_s": None,
        "roundtrip": False,
        "error": f"child process {why}",
        "peak_mem_bytes": None,
    }


def _in_process(codec: Codec, data: bytes) -> dict[str, Any]:
    import tracemalloc

    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        result = _run_pair(codec, data)
        result["peak_mem_bytes"] = max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()
    return result


def can_fork() -> bool:
    return hasattr(os, "fork")


def measure(
    codec: Codec,
    data: bytes,
    *,
    file: str,
    isolate: bool = True,
    timeout_s: float | None = None,
) -> Measurement:
    """Run ``codec`` on ``data`` once; ``isolate`` forks a child where possible.

    ``timeout_s`` (forked children only) kills a codec that takes longer for compress +
    decompress; its row says so and counts as a failed round trip.
    """
    if isolate and can_fork():
        result = _in_child(codec, data, timeout_s)
    else:
        result = _in_process(codec, data)
    return Measurement(
        compressor=codec.name,
        file=file,
        raw_bytes=len(data),
        payload_bytes=result["payload_bytes"],
        model_bytes=codec.model_bytes,
        compress_s=result["compress_s"],
        decompress_s=result["decompress_s"],
        roundtrip=result["roundtrip"],
        peak_mem_bytes=result["peak_mem_bytes"],
        kind=codec.kind,
        error=result["error"],
    )


# --- from measurements to rows ---------------------------------------------------------------


def _kbps(n_bytes: int, seconds: float | None) -> float | None:
    """Speed in kB/s (1 kB = 1000 bytes) of raw input."""
    if seconds is None or n_bytes == 0:
        return None
    return n_bytes / 1000.0 / max(seconds, 1e-9)


def _total_kbps(n_bytes: int, seconds: Sequence[float | None]) -> float | None:
    if any(s is None for s in seconds):
        return None
    return _kbps(n_bytes, sum(s or 0.0 for s in seconds))


def _bpb(n_bits_bytes: int | None, raw_bytes: int) -> float | None:
    if n_bits_bytes is None or raw_bytes == 0:
        return None
    return 8.0 * n_bits_bytes / raw_bytes


def row_from(measurements: Sequence[Measurement], *, file: str | None = None) -> dict[str, Any]:
    """One report row from the measurements of one compressor (one file, or all files)."""
    first = measurements[0]
    raw = sum(m.raw_bytes for m in measurements)
    payloads = [m.payload_bytes for m in measurements]
    payload = None if any(p is None for p in payloads) else sum(p or 0 for p in payloads)
    cs = [m.compress_s for m in measurements]
    ds = [m.decompress_s for m in measurements]
    trips = [m.roundtrip for m in measurements]
    roundtrip: bool | None = (
        None if all(t is None for t in trips) else all(t is True for t in trips)
    )
    mems = [m.peak_mem_bytes for m in measurements if m.peak_mem_bytes is not None]
    errors = [f"{m.file}: {m.error}" if file is None else m.error for m in measurements if m.error]
    row: dict[str, Any] = {
        "compressor": first.compressor,
        "kind": first.kind,
        "raw_bytes": raw,
        "payload_bytes": payload,
        "model_bytes": first.model_bytes,
        "bpb": _bpb(payload, raw),
        "bpb_with_model": _bpb(None if payload is None else payload + first.model_bytes, raw),
        "compress_kbps": _total_kbps(raw, cs),
        "decompress_kbps": _total_kbps(raw, ds),
        "roundtrip": roundtrip,
        "peak_mem_bytes": max(mems) if mems else None,
        "break_even_bytes": None,
        "tinyzip_wins_below_bytes": None,
        "error": "; ".join(errors) if errors else None,
    }
    if file is not None:
        row = {"file": file, **row}
    return row


def break_even(
    model_tz: int, rate_tz: float, model_base: int, rate_base: float
) -> tuple[int | str, int | None]:
    """From how many raw bytes tinyzip's model + payload beats a baseline's.

    Sizes grow linearly with the corpus size N: tinyzip costs ``model_tz + rate_tz * N`` bytes,
    the baseline ``model_base + rate_base * N`` (rates are payload bytes per raw byte, i.e.
    bpb / 8). tinyzip wins for every N >= (model_tz - model_base) / (rate_base - rate_tz) when
    its rate is lower, from the first byte when its model is also no bigger, and "never" when
    its rate is not lower. The second value is set in that last case when tinyzip still wins
    on small inputs thanks to a smaller model (e.g. against a generic LLM's weights): it wins
    only for N below that many bytes.
    """
    d_model = model_tz - model_base
    d_rate = rate_base - rate_tz
    if d_rate > 0:
        # Equal at N = d_model / d_rate; strictly smaller one byte later.
        return (0 if d_model < 0 else math.floor(d_model / d_rate) + 1), None
    if d_rate == 0:
        return (0 if d_model < 0 else "never"), None
    if d_model < 0:
        return "never", math.ceil(d_model / d_rate)
    return "never", None


def fill_break_even(rows: list[dict[str, Any]], reference: str | None) -> None:
    """Set ``break_even_bytes`` of every row against the row named ``reference`` in place."""
    ref = next((r for r in rows if r["compressor"] == reference), None)
    if ref is None or ref["payload_bytes"] is None or not ref["raw_bytes"] or not ref["roundtrip"]:
        return
    rate_tz = ref["payload_bytes"] / ref["raw_bytes"]
    for row in rows:
        if row is ref or row["payload_bytes"] is None or not row["raw_bytes"]:
            continue
        if row["roundtrip"] is False:
            continue  # a codec that loses data is no baseline to beat
        n, below = break_even(
            ref["model_bytes"], rate_tz, row["model_bytes"], row["payload_bytes"] / row["raw_bytes"]
        )
        row["break_even_bytes"] = n
        row["tinyzip_wins_below_bytes"] = below


def measurement_dicts(measurements: Sequence[Measurement]) -> list[dict[str, Any]]:
    return [asdict(m) for m in measurements]
