"""tinyzip: lossless compression with a small domain transformer and online context mixing.

The API mirrors the standard library's lzma/gzip modules::

    import tinyzip
    blob = tinyzip.compress(data)            # default model
    data = tinyzip.decompress(blob)
    with tinyzip.open("app.log.tzp", "wb") as f:
        f.write(data)

Importing tinyzip never imports torch, lightning or wandb.
"""

from tinyzip.api import TinyzipFile, compress, compress_stream, decompress, decompress_stream, open
from tinyzip.errors import (
    CheckpointError,
    CorruptInputError,
    TinyzipError,
    UsageError,
    WrongModelError,
)
from tinyzip.models import model_bytes

__all__ = [
    "CheckpointError",
    "CorruptInputError",
    "TinyzipError",
    "TinyzipFile",
    "UsageError",
    "WrongModelError",
    "compress",
    "compress_stream",
    "decompress",
    "decompress_stream",
    "model_bytes",
    "open",
]
__version__ = "0.1.0"
