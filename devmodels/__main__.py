"""``python -m devmodels``: see ``devmodels._cli``."""

import sys

from ._cli import main

sys.exit(main())
