"""``python -m lungscope.cli``: the same as the ``lungscope`` command."""

import sys

from lungscope.cli import main

sys.exit(main())
