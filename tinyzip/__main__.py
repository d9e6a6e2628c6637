"""``python -m tinyzip`` is the ``tinyzip`` command."""

import sys

from tinyzip.cli import main

sys.exit(main())
