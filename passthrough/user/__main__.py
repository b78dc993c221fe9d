"""``python -m passthrough.user``: see ``passthrough.user.cli``."""

import sys

from .cli import main

sys.exit(main())
