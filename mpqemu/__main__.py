"""``python -m mpqemu``: see ``mpqemu.cli``."""

import sys

from .cli import main

sys.exit(main())
