"""A Linux TAP interface as a network backend (needs CAP_NET_ADMIN and /dev/net/tun).

Rules:

1. The TAP is created ``IFF_TAP | IFF_NO_PI`` on a non-blocking fd; it disappears when the
   backend closes (it is not made persistent). Bringing it up, addressing it or moving it to
   another network namespace is the VMM's job (``ip link ...``); the fd keeps working.
2. With ``vnet_hdr=True`` the fd is opened ``IFF_VNET_HDR`` with a 12-byte header
   (TUNSETVNETHDRSZ, VIRTIO 1.2 §5.1.6) and the backend reports offloads. The fd then always
   carries a header; while the device has not enabled it (``set_vnet_hdr(False)``) the
   backend adds a zero header on ``send`` and strips (finishing any partial checksum) on
   ``receive``, so the device sees plain frames either way.
3. What the kernel may hand us (TUNSETOFFLOAD) starts at nothing — fully checksummed,
   segmented frames, always valid for a guest — and widens only through ``set_offloads``
   once the guest negotiated the matching virtio-net features, and only while the header
   is enabled.
4. ``send`` returns ``False`` when the TAP queue is full; any other write error loses the
   frame (counted in ``dropped``). Reads are whole frames; host ``OSError`` never escapes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..._errors import HostError, UsageError
from .._net import NetOffloads
from ._packets import VNET_HDR_SIZE, strip_vnet_header

__all__ = ["TapBackend", "TUN_PATH"]

TUN_PATH = "/dev/net/tun"

# linux/if_tun.h
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

_IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, then ifr_flags in the union
_READ_SIZE = VNET_HDR_SIZE + 65_536 + 64
_ZERO_HDR = bytes(VNET_HDR_SIZE)
_TAP_OFFLOADS = NetOffloads(csum=True, tso4=True, tso6=True, ecn=True, ufo=False)


def _flags_of(offloads: NetOffloads) -> int:
    flags = 0
    if offloads.csum:
        flags |= TUN_F_CSUM
        # TSO needs checksum offload (the kernel refuses TSO flags without TUN_F_CSUM).
        if offloads.tso4:
            flags |= TUN_F_TSO4
        if offloads.tso6:
            flags |= TUN_F_TSO6
        if offloads.ecn and (offloads.tso4 or offloads.tso6):
            flags |= TUN_F_TSO_ECN
    return flags


class TapBackend:
    """A TAP interface.

    Args:
        name: interface name (at most 15 characters); empty lets the kernel pick ``tapN``.
        vnet_hdr: open with a virtio-net header so offloads are possible (rule 2).

    Raises:
        UsageError: a bad name.
        HostError: /dev/net/tun is missing, the caller lacks CAP_NET_ADMIN, or the name is
            taken by an interface of another kind.
    """

    def __init__(self, name: str = "", *, vnet_hdr: bool = False) -> None:
        if (
            not isinstance(name, str)
            or not name.isascii()
            or len(name) >= _IFNAMSIZ
            or any(c in name for c in "/:\0") or any(c.isspace() for c in name)
        ):
            raise UsageError(f"TAP name must be an ASCII interface name of at most 15 characters, got {name!r}")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise HostError(f"{TUN_PATH} does not exist (no TUN/TAP support on this host)") from exc
        except OSError as exc:
            raise HostError(f"cannot open {TUN_PATH}: {exc.strerror} (TAP needs CAP_NET_ADMIN)") from exc
        try:
            flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise HostError(f"creating TAP {name!r} is not permitted (needs CAP_NET_ADMIN)") from exc
            raise HostError(f"cannot create TAP {name!r}: {exc.strerror}") from exc
        self._fd = fd
        self._name = _IFREQ.unpack(answer)[0].rstrip(b"\0").decode("ascii")
        self._has_hdr = bool(vnet_hdr)
        self._vnet = False
        self._rx_offloads = NetOffloads()
        self._dropped = 0
        self._closed = False

    @property
    def name(self) -> str:
        """The interface name the kernel gave the TAP."""
        return self._name

    # -- NetBackend -----------------------------------------------------------------------

    @property
    def offloads(self) -> NetOffloads:
        """Checksum, TSO4/6 and ECN with ``vnet_hdr=True``; none otherwise."""
        return _TAP_OFFLOADS if self._has_hdr else NetOffloads()

    @property
    def dropped(self) -> int:
        """Frames lost: write errors, and GSO frames that arrived while the header was off."""
        return self._dropped

    def send(self, frame: bytes | bytearray | memoryview) -> bool:
        """Write one frame to the TAP (rule 4).

        Raises:
            UsageError: the backend is closed.
        """
        if self._closed:
            raise UsageError("TAP backend is closed")
        try:
            if self._has_hdr and not self._vnet:
                os.writev(self._fd, [_ZERO_HDR, frame])
            else:
                os.write(self._fd, frame)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                return False
            self._dropped += 1  # EINVAL (bad header/frame), EIO (link down): a lost frame
        return True

    def receive(self, limit: int = 64) -> list[bytes]:
        """Up to ``limit`` frames waiting now, oldest first.

        Raises:
            UsageError: the backend is closed.
        """
        if self._closed:
            raise UsageError("TAP backend is closed")
        out: list[bytes] = []
        while len(out) < limit:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # EIO/EBADFD: the interface went away; nothing to read
            if not data:
                break
            if self._has_hdr and not self._vnet:
                finished = strip_vnet_header(data)
                if finished is None:
                    self._dropped += 1
                    continue
                data = finished
            out.append(data)
        return out

    def set_vnet_hdr(self, enabled: bool) -> None:
        """Frames in both directions carry the virtio-net header (rule 2).

        Raises:
            UsageError: enabling it on a TAP opened without ``vnet_hdr=True``.
        """
        if enabled and not self._has_hdr:
            raise UsageError("this TAP was opened without vnet_hdr=True; it carries no virtio-net header")
        self._vnet = bool(enabled) and self._has_hdr
        if self._has_hdr:
            self._apply_offloads()

    def set_offloads(self, offloads: NetOffloads) -> None:
        """Let the kernel hand over frames using these offloads (rule 3): call it with what
        the guest accepted (VIRTIO_NET_F_GUEST_CSUM, GUEST_TSO4, ...).

        Raises:
            UsageError: the TAP has no header, or an offload it cannot carry was asked for.
            HostError: the kernel refused.
        """
        if not self._has_hdr:
            raise UsageError("this TAP was opened without vnet_hdr=True; it has no offloads")
        if offloads.ufo:
            raise UsageError("UFO is not available on TAP")
        self._rx_offloads = offloads
        self._apply_offloads()

    def _apply_offloads(self) -> None:
        flags = _flags_of(self._rx_offloads) if self._vnet else 0
        try:
            fcntl.ioctl(self._fd, TUNSETOFFLOAD, flags)
        except OSError as exc:
            raise HostError(f"TUNSETOFFLOAD {flags:#x} on {self._name}: {exc.strerror}") from exc

    def fileno(self) -> int | None:
        """The TAP fd; readable when frames arrive."""
        return None if self._closed else self._fd

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Accepted for the interface; a TAP has an fd to poll and never calls it."""

    def close(self) -> None:
        """Close the fd; the interface disappears. Idempotent."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __enter__(self) -> TapBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # the static proof that TapBackend implements the interface
    from .._net import NetBackend

    def _implements(backend: TapBackend) -> NetBackend:
        return backend
