"""The snapshot contract, public for device authors: the ``check_*`` helpers every
``restore()`` validates with, ``to_dict``/``from_dict``, ``Snapshotable`` and
``SnapshotError``. The rules are in ``devmodels._state``.
"""

from ._errors import SnapshotError
from ._state import Snapshotable, check_bool, check_bytes, check_int, check_type, check_version, from_dict, to_dict

__all__ = ["SnapshotError", "Snapshotable", "check_bool", "check_bytes", "check_int", "check_type", "check_version",
           "from_dict", "to_dict"]
