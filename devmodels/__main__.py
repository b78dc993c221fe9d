"""``python -m devmodels``: see ``devmodels.cli``."""

import sys

from .cli import main

sys.exit(main())
