"""``python -m advisor``: the ``dsadvise`` command."""

import sys

from .cli import main

sys.exit(main())
