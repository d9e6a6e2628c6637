"""Train a tinyzip model: the same as `tinyzip train` (see `python train.py --help`)."""
import sys

from tinyzip.train.cli import main

sys.exit(main(sys.argv[1:], catch_errors=True))
