"""``python -m unetseg.cli``: the ``unetseg`` command."""

import sys

from unetseg.cli import main

sys.exit(main())
