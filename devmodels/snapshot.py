"""The snapshot contract, public for device authors: ``require_quiesced`` (``state()``
at the quiesce point), ``check_args`` and the ``check_*`` helpers every ``restore()``
validates with, ``to_dict``/``from_dict``, ``Snapshotable``/``Persistent`` and
``SnapshotError``. The rules are in ``devmodels._state``; the file format is
``devmodels.snapshot_file``.
"""

from ._errors import SnapshotError
from ._state import (
    Persistent,
    Snapshotable,
    check_args,
    check_bool,
    check_bytes,
    check_int,
    check_type,
    check_version,
    from_dict,
    require_quiesced,
    to_dict,
)

__all__ = ["SnapshotError", "Snapshotable", "Persistent", "check_args", "check_bool", "check_bytes", "check_int",
           "check_type", "check_version", "from_dict", "require_quiesced", "to_dict"]
