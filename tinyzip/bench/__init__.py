"""``tinyzip bench``: tinyzip beside gzip, bzip2, xz, zstd, brotli, PPMd and generic LLMs.

``main(argv)`` is the entry point the CLI dispatcher calls; ``codecs.registry()`` is the codec
registry (one ``bytes -> bytes`` protocol for every compressor, tinyzip included).
Importing this package imports neither torch nor matplotlib.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``tinyzip bench`` with ``argv`` (without the program and subcommand names)."""
    from tinyzip.bench.cli import main as _main

    return _main(argv)


__all__ = ["main"]
