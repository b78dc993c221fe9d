"""The AHCI side of fault injection (``devmodels.faults``): a drive reset abandons stuck commands.

Rules:

1. A SATA drive that is reset (COMRESET, a software reset through the Device Control FIS,
   an HBA reset: SATA 3.x §11.4, AHCI 1.3.1 §10.4) abandons the command it was working
   on. With ``disk.stuck`` the wrapped backend holds such a command; ``abandon_on_reset``
   makes each drive's reset tell its backend to complete what it holds with an error, so
   the port's reset finishes (``AhciPort`` rule 5: the link waits for the backend) and the
   disk comes back, as a real one does after libata's port reset.
2. Only drives whose backend can abandon (``FaultyBlockBackend.abandon``) are hooked; the
   hook sits on the drive instance's ``reset`` and changes nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from .hba import AhciController

__all__ = ["abandon_on_reset"]


def abandon_on_reset(controller: AhciController) -> int:
    """Hook every attached drive whose backend can abandon (rules 1–2); return how many."""
    hooked = 0
    for port in controller.ports:
        drive = port.drive
        if drive is None:
            continue
        abandon = getattr(drive.backend, "abandon", None)
        if not callable(abandon):
            continue
        drive.reset = _after(drive.reset, abandon)  # type: ignore[method-assign]
        hooked += 1
    return hooked


def _after(reset: Callable[[], None], abandon: Callable[[], object]) -> Callable[[], None]:
    def hooked_reset() -> None:
        reset()
        abandon()

    return hooked_reset
