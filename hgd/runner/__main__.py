"""``python -m hgd.runner``: see :mod:`hgd.runner.cli`."""

import sys

from hgd.runner.cli import main

sys.exit(main())
