"""``VFIO_USER_DEVICE_FEATURE`` of the server: migration and DMA dirty-page logging.

vfio-user.rst "VFIO_USER_DEVICE_FEATURE" (the vfio-user form of ``linux/vfio.h``
``VFIO_DEVICE_FEATURE``).

Rules:

1. ``flags`` holds a feature index (bits 0–15) and the operations GET, SET, PROBE; any
   other bit, no operation, or GET with SET outside a probe is ``EINVAL``. A feature this
   server does not offer, or an operation the feature does not support, is ``ENOTSUP``
   (the kernel's ``vfio_check_feature`` says ``EINVAL`` for the latter; no client
   tells the two apart, and "not supported" is what happened). A probe succeeds when every named operation is
   supported and echoes the request ("The reply payload must be the same as the request
   payload for setting or probing a feature").
2. Migration (``MIGRATION``: GET; ``MIG_DEVICE_STATE``: GET/SET) is offered when the
   function follows the snapshot contract (``migration.MigrationStateMachine``).
3. DMA logging (``DMA_LOGGING_START``/``STOP``: SET; ``DMA_LOGGING_REPORT``: GET) is
   offered when the device memory is a ``DmaMemory``, whose write paths feed a
   ``dirty.DirtyLog``. START replaces a log already running (a client restarting its
   migration); STOP of no log succeeds. START replies with the page size chosen; REPORT
   with the bitmap after the request's 24 bytes. With ``num_ranges`` 0 the log follows
   the DMA windows (``window_added``/``window_removed``); a window that cannot be logged
   any more (the memory bound) is left out, with a warning, and a REPORT over it is
   refused, so no dirty page is lost silently.
4. A GET whose ``argsz`` is smaller than its full reply is ``EINVAL``, as the kernel's
   ``vfio_check_feature`` and libvfio-user answer (vfio-user.rst "Message sizes" would
   also allow a reply carrying only the size needed; the clients size these requests
   exactly, and an error is the answer no client can mistake for data). A refused REPORT
   clears nothing.
5. Sizes are bounded: at most ``dirty.MAX_RANGES`` ranges, ``MAX_LOG_BYTES`` of log
   bitmap and ``MAX_REPORT_BYTES`` of report bitmap (``E2BIG`` beyond).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import TypeVar

from devmodels import GuestMemory

from ..defs import (
    VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
    VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_MASK,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_MIGRATION_STOP_COPY,
)
from ..errors import VfioUserReject
from ..layouts import (
    Layout,
    LayoutError,
    vfio_device_feature_dma_logging_control,
    vfio_device_feature_dma_logging_range,
    vfio_device_feature_dma_logging_report,
    vfio_device_feature_mig_state,
    vfio_device_feature_migration,
    vfio_user_device_feature,
)
from .dirty import MAX_RANGES, DirtyLog
from .dma import DmaMemory, DmaWindow
from .migration import MigrationStateMachine

__all__ = ["DeviceFeatures", "MAX_LOG_BYTES", "MAX_REPORT_BYTES"]

_log = logging.getLogger("devmodels.passthrough.vfio_user")

MAX_LOG_BYTES = 32 << 20  # 1 TiB of 4 KiB pages
MAX_REPORT_BYTES = 32 << 20

T = TypeVar("T", bound=tuple)

_OPS = VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_PROBE
_HEAD = vfio_user_device_feature.size


def _unpack(layout: Layout[T], data: bytes, offset: int = 0) -> T:
    try:
        return layout.unpack(data, offset)
    except LayoutError as exc:
        raise VfioUserReject(errno.EINVAL, f"DEVICE_FEATURE: {exc}") from None


class DeviceFeatures:
    """Answers ``DEVICE_FEATURE`` requests for one served function (rules 1–5).

    Args:
        migration: the function's migration state machine.
        memory: the device memory (DMA logging needs a ``DmaMemory``).
        windows: the current DMA windows (for "log everything").
    """

    def __init__(
        self, migration: MigrationStateMachine, memory: GuestMemory, windows: Callable[[], tuple[DmaWindow, ...]]
    ) -> None:
        self.migration = migration
        self.memory = memory
        self.windows = windows
        self.log: DirtyLog | None = None

    def supported_ops(self, feature: int) -> int:
        """The operations ``feature`` supports here (0: not offered)."""
        if feature == VFIO_DEVICE_FEATURE_MIGRATION and self.migration.supported:
            return VFIO_DEVICE_FEATURE_GET
        if feature == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE and self.migration.supported:
            return VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET
        if isinstance(self.memory, DmaMemory):
            if feature in (VFIO_DEVICE_FEATURE_DMA_LOGGING_START, VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP):
                return VFIO_DEVICE_FEATURE_SET
            if feature == VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT:
                return VFIO_DEVICE_FEATURE_GET
        return 0

    def handle(self, payload: bytes) -> bytes:
        """The reply payload to one request.

        Raises:
            VfioUserReject: the request breaks rules 1–5 or the feature refuses it.
        """
        request = _unpack(vfio_user_device_feature, payload)
        if request.argsz < _HEAD:
            raise VfioUserReject(errno.EINVAL, f"DEVICE_FEATURE: argsz {request.argsz} is smaller than {_HEAD} bytes")
        ops = request.flags & _OPS
        feature = request.flags & VFIO_DEVICE_FEATURE_MASK
        if request.flags & ~(VFIO_DEVICE_FEATURE_MASK | _OPS) or not ops:
            raise VfioUserReject(errno.EINVAL, f"bad DEVICE_FEATURE flags {request.flags:#x}")
        get, set_ = bool(ops & VFIO_DEVICE_FEATURE_GET), bool(ops & VFIO_DEVICE_FEATURE_SET)
        probe = bool(ops & VFIO_DEVICE_FEATURE_PROBE)
        if get and set_ and not probe:
            raise VfioUserReject(errno.EINVAL, "GET and SET are exclusive unless probing")
        supported = self.supported_ops(feature)
        if not supported:
            raise VfioUserReject(errno.ENOTSUP, f"device feature {feature} is not supported")
        if ops & (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET) & ~supported:
            raise VfioUserReject(errno.ENOTSUP, f"device feature {feature} does not support flags {request.flags:#x}")
        if probe:
            return payload
        if not get and not set_:
            raise VfioUserReject(errno.EINVAL, "DEVICE_FEATURE names no operation")
        data = payload[_HEAD:]
        if feature == VFIO_DEVICE_FEATURE_MIGRATION:
            return self._get(request.argsz, request.flags, vfio_device_feature_migration.pack(VFIO_MIGRATION_STOP_COPY))
        if feature == VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE:
            if set_:
                self.migration.set_state(_unpack(vfio_device_feature_mig_state, data).device_state)
                return payload
            return self._get(request.argsz, request.flags, vfio_device_feature_mig_state.pack(self.migration.state, -1))
        if feature == VFIO_DEVICE_FEATURE_DMA_LOGGING_START:
            return payload[:_HEAD] + self._start(data)
        if feature == VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP:
            self.stop_logging()
            return payload
        return self._report(request.argsz, request.flags, data)

    @staticmethod
    def _get(argsz: int, flags: int, body: bytes) -> bytes:
        """A GET reply: the data after the header (rule 4)."""
        size = _HEAD + len(body)
        if argsz < size:
            raise VfioUserReject(errno.EINVAL, f"DEVICE_FEATURE GET needs argsz {size}, got {argsz}")
        return vfio_user_device_feature.pack(size, flags) + body

    # -- DMA logging (rule 3) ---------------------------------------------------------------

    def _start(self, data: bytes) -> bytes:
        control = _unpack(vfio_device_feature_dma_logging_control, data)
        if control.num_ranges > MAX_RANGES:
            raise VfioUserReject(errno.E2BIG, f"{control.num_ranges} DMA logging ranges (at most {MAX_RANGES})")
        base = vfio_device_feature_dma_logging_control.size
        step = vfio_device_feature_dma_logging_range.size
        if len(data) < base + control.num_ranges * step:
            raise VfioUserReject(errno.EINVAL, f"DMA_LOGGING_START announces {control.num_ranges} ranges but carries fewer")
        ranges: list[tuple[int, int]] = []
        for i in range(control.num_ranges):
            entry = _unpack(vfio_device_feature_dma_logging_range, data, base + i * step)
            ranges.append((entry.iova, entry.length))
        everything = control.num_ranges == 0
        if everything:
            ranges = [(w.address, w.size) for w in self.windows()]
        log = DirtyLog(ranges, control.page_size, max_bitmap_bytes=MAX_LOG_BYTES, all_windows=everything)
        self.stop_logging()
        self.log = log
        assert isinstance(self.memory, DmaMemory)
        self.memory.dirty = log
        return vfio_device_feature_dma_logging_control.pack(log.page_size, control.num_ranges) + data[base:]

    def stop_logging(self) -> None:
        """End DMA logging (STOP, client disconnect)."""
        self.log = None
        if isinstance(self.memory, DmaMemory):
            self.memory.dirty = None

    def _report(self, argsz: int, flags: int, data: bytes) -> bytes:
        report = _unpack(vfio_device_feature_dma_logging_report, data)
        if self.log is None:
            raise VfioUserReject(errno.EINVAL, "DMA_LOGGING_REPORT while DMA logging is stopped")
        if report.page_size <= 0 or report.length <= 0:
            raise VfioUserReject(errno.EINVAL, "DMA_LOGGING_REPORT of an empty range or page size 0")
        pages = -(-report.length // report.page_size)
        bitmap_bytes = -(-pages // 64) * 8
        if bitmap_bytes > MAX_REPORT_BYTES:
            raise VfioUserReject(errno.E2BIG, f"DMA_LOGGING_REPORT bitmap of {bitmap_bytes} bytes (at most {MAX_REPORT_BYTES})")
        head = data[: vfio_device_feature_dma_logging_report.size]
        size = _HEAD + len(head) + bitmap_bytes
        if argsz < size:  # rule 4, before anything is cleared
            raise VfioUserReject(errno.EINVAL, f"DMA_LOGGING_REPORT needs argsz {size}, got {argsz}")
        bitmap = self.log.report(report.iova, report.length, report.page_size)
        return vfio_user_device_feature.pack(size, flags) + head + bitmap

    def window_added(self, window: DmaWindow) -> None:
        """A DMA window was mapped: log it too when logging everything (rule 3)."""
        if self.log is not None and self.log.all_windows:
            try:
                self.log.add_range(window.address, window.size)
            except VfioUserReject as exc:
                _log.warning("vfio-user: DMA window [%#x, +%#x) is not dirty-logged: %s", window.address, window.size, exc.reason)

    def window_removed(self, window: DmaWindow) -> None:
        """A DMA window was unmapped: stop logging it when logging everything."""
        if self.log is not None and self.log.all_windows:
            self.log.remove_range(window.address)
