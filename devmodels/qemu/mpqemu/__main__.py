"""``python -m devmodels.qemu.mpqemu``: see ``devmodels.qemu.mpqemu.cli``."""

import sys

from .cli import main

sys.exit(main())
