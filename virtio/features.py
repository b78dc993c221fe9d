"""Feature negotiation (VIRTIO 1.2 §2.2, §3.1.1) through 32-bit select windows.

Rules:

1. The device offers a fixed set of feature bits; VIRTIO_F_VERSION_1 is always among them
   (§6.2: a device MUST offer it). The driver sees and writes them 32 bits at a time, the
   window chosen by a select value (§4.1.4.3 ``device_feature_select``/
   ``driver_feature_select``, §4.2.2 ``DeviceFeaturesSel``/``DriverFeaturesSel``).
2. Windows past ``VIRTIO_FEATURE_BITS`` read as 0 and writes to them are dropped: the
   device offers nothing there (§4.1.4.3.1 note). Storage is therefore bounded whatever
   select value a guest writes.
3. Inside the windows the driver's writes are mirrored as written (§4.1.4.3.1 allows
   presenting invalid bits), so ``negotiate`` can see and refuse bits that were never
   offered.
4. ``negotiate`` is the FEATURES_OK check (§2.2.2): the accepted set must be a subset of
   the offered set, must include VIRTIO_F_VERSION_1 (this library has no legacy
   interface, §6.2 "MAY fail to operate further"), and must pass the device's own check.
   On success the set is frozen until reset: later driver writes are dropped (§3.1.1
   step 5: "MUST NOT accept new feature bits after this step").
"""

from __future__ import annotations

from devmodels import UsageError
from devmodels.trace import tracepoint

from . import defs as _defs
from .defs import VIRTIO_F_VERSION_1, VIRTIO_FEATURE_BITS

__all__ = ["Features", "feature_names", "bit", "feature_mask"]

_WINDOWS = VIRTIO_FEATURE_BITS // 32
_MASK = (1 << VIRTIO_FEATURE_BITS) - 1

_tp_dropped = tracepoint("virtio.features_dropped")


def bit(number: int) -> int:
    """The mask of feature bit ``number`` (``bit(VIRTIO_F_VERSION_1) == 1 << 32``)."""
    return 1 << number


def feature_mask(*numbers: int) -> int:
    """The mask of feature bits ``numbers``: ``VIRTIO_F_*`` and the device ``*_F_*``
    constants are bit numbers (§2.2), and every argument that takes features is a mask.

    ``feature_mask(VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED) == 1 << 32 | 1 << 34``.

    Raises:
        UsageError: a number is not a feature bit (0..127).
    """
    mask = 0
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < VIRTIO_FEATURE_BITS:
            raise UsageError(f"feature bit numbers are 0..{VIRTIO_FEATURE_BITS - 1}, got {number!r}")
        mask |= 1 << number
    return mask


class Features:
    """The offered, driver-written and negotiated feature sets of one device.

    Args:
        offered: the device's feature bits (a mask below 2**128); VERSION_1 is added.

    Raises:
        UsageError: ``offered`` is not a non-negative integer below 2**128.
    """

    __slots__ = ("offered", "driver", "negotiated", "locked")

    def __init__(self, offered: int) -> None:
        if not isinstance(offered, int) or offered < 0 or offered > _MASK:
            raise UsageError(f"offered features must be a mask below 2**{VIRTIO_FEATURE_BITS}, got {offered!r}")
        self.offered = offered | bit(VIRTIO_F_VERSION_1)
        self.driver = 0
        self.negotiated = 0
        self.locked = False

    def reset(self) -> None:
        """Forget what the driver wrote and negotiated (device reset)."""
        self.driver = 0
        self.negotiated = 0
        self.locked = False

    # -- 32-bit windows ---------------------------------------------------------------------

    def device_window(self, select: int) -> int:
        """Offered bits ``select*32 .. select*32+31`` (0 outside the windows)."""
        if not 0 <= select < _WINDOWS:
            return 0
        return (self.offered >> (32 * select)) & 0xFFFF_FFFF

    def driver_window(self, select: int) -> int:
        """What the driver wrote into window ``select`` (0 outside the windows)."""
        if not 0 <= select < _WINDOWS:
            return 0
        return (self.driver >> (32 * select)) & 0xFFFF_FFFF

    def write_driver_window(self, select: int, value: int) -> bool:
        """Store the driver's ``value`` in window ``select``; ``False`` if dropped (rule 2, 4)."""
        if self.locked or not 0 <= select < _WINDOWS:
            if _tp_dropped.on:
                _tp_dropped.emit(select=select, value=value, locked=self.locked)
            return False
        shift = 32 * select
        self.driver = (self.driver & ~(0xFFFF_FFFF << shift)) | ((value & 0xFFFF_FFFF) << shift)
        return True

    # -- FEATURES_OK --------------------------------------------------------------------------

    def check(self, accepted: int) -> str | None:
        """Why ``accepted`` cannot be negotiated (rule 4, without the device's check), or ``None``."""
        unoffered = accepted & ~self.offered
        if unoffered:
            return f"driver accepted features that were not offered: {unoffered:#x}"
        if not accepted & bit(VIRTIO_F_VERSION_1):
            return "driver did not accept VIRTIO_F_VERSION_1 (no legacy interface)"
        return None

    def accept(self, accepted: int) -> None:
        """Freeze ``accepted`` as the negotiated set (after ``check`` and the device agreed)."""
        self.driver = accepted
        self.negotiated = accepted
        self.locked = True

    def has(self, number: int) -> bool:
        """Whether feature bit ``number`` was negotiated."""
        return bool(self.negotiated >> number & 1)


def feature_names(mask: int, names: dict[int, str] | None = None) -> list[str]:
    """Readable names of the bits in ``mask`` (``VIRTIO_F_*`` plus any ``names`` given)."""
    known = {
        getattr(_defs, name): name
        for name in dir(_defs)
        if name.startswith("VIRTIO_F_") and isinstance(getattr(_defs, name), int)
    }
    known.update(names or {})
    return [known.get(n, f"bit{n}") for n in range(mask.bit_length()) if mask >> n & 1]
