"""The 82540EM's side of fault injection (``devmodels.faults``): what its hardware does when
the link drops, the transmitter hangs, the wire corrupts a frame or the receive ring overruns.

Rules:

1. ``net.link-down``: the PHY loses the cable (``E1000.set_link(False)``): STATUS.LU reads
   0 and LSC is raised (SDM §3.4.1, §13.4.2); when the window closes, link returns and LSC
   is raised again. While the PHY has no link the MAC sends nothing and receives nothing.
2. ``net.tx-hang``: the transmit DMA stops. TDT writes are taken but no descriptor is
   fetched, sent or written back (no DD), so TDH stays and no TXDW follows: what the
   Linux driver's "Detected Tx Unit Hang" check looks for. ``until_reset``: a software
   reset (CTRL.RST, or a function reset) restarts the transmit unit and ends the fault; so
   does the end of the window, which also sends what was queued meanwhile.
3. A frame the wire corrupted (``devmodels.faults.CorruptFrame``) fails the MAC's FCS check:
   it is dropped and counted in CRCERRS (SDM §13.7: CRC Error Count), unless RCTL.SBP
   (store bad packets) is set, when it is delivered as received.
4. ``net.rx-overrun``: ``frames`` broadcast frames arrive at once, whatever room the ring
   has; what does not fit is dropped the architected way (``RxEngine``: MPC, RNBC, the RXO
   interrupt).
5. The hooks sit on the device's own transmit and receive engines (their ``process``,
   ``reset`` and ``receive``, per instance); ``remove`` takes them off again.
"""

from __future__ import annotations

from collections.abc import Callable

from ..faults import ActiveFault, CorruptFrame, FaultEngine, LinkActuator, overrun_frame
from ..faults.plan import RxOverrun, TxHang
from . import regs as r
from .device import E1000
from .rx import RxResult

__all__ = ["E1000Faults"]

class _Overrun:
    def __init__(self, device: E1000) -> None:
        self.device = device
        self.dropped = 0

    def start(self, active: ActiveFault) -> None:
        fault = active.fault
        assert isinstance(fault, RxOverrun)  # registered for this kind only
        frame = overrun_frame(fault.size)
        for _ in range(fault.frames):
            if self.device.receive_frame(frame) is RxResult.NO_BUFFERS:
                self.dropped += 1

    def stop(self, active: ActiveFault) -> None:
        """Nothing to undo: the burst has arrived."""


class E1000Faults:
    """The hooks of rules 1–5 on ``device``, registered with ``engine``.

    Attributes:
        crc_errors: frames dropped by the FCS check (rule 3).
    """

    def __init__(self, device: E1000, engine: FaultEngine) -> None:
        self.device = device
        self.engine = engine
        self.crc_errors = 0
        self._hang: str | None = None  # the id of the tx-hang in effect
        tx, rx = device.tx, device.rx
        self._process: Callable[[], int] = tx.process
        self._tx_reset: Callable[[], None] = tx.reset
        self._receive = rx.receive
        tx.process = self._tx_process  # type: ignore[method-assign]
        tx.reset = self._on_tx_reset  # type: ignore[method-assign]
        rx.receive = self._rx_receive  # type: ignore[method-assign]
        self.overrun = _Overrun(device)
        engine.add_actuator("net.link-down", LinkActuator(device))
        engine.add_actuator("net.tx-hang", self)
        engine.add_actuator("net.rx-overrun", self.overrun)

    def remove(self) -> None:
        """Take the hooks off the device (rule 5)."""
        for engine_part, name in ((self.device.tx, "process"), (self.device.tx, "reset"), (self.device.rx, "receive")):
            if name in vars(engine_part):
                delattr(engine_part, name)

    # -- net.tx-hang (rule 2) ------------------------------------------------------------------

    def start(self, active: ActiveFault) -> None:
        """The transmit DMA stops."""
        self._hang = active.id

    def stop(self, active: ActiveFault) -> None:
        """The transmit DMA runs again and sends what was queued."""
        if self._hang == active.id:
            self._hang = None
            self._process()

    def _tx_process(self) -> int:
        if self._hang is not None:
            return 0
        return self._process()

    def _on_tx_reset(self) -> None:
        self._tx_reset()
        hang = self._hang
        if hang is None:
            return
        active = self.engine.get(hang)
        if active is not None and isinstance(active.fault, TxHang) and active.fault.until_reset:
            self._hang = None
            self.engine.end(hang)

    # -- corrupted frames (rule 3) ---------------------------------------------------------------

    def _rx_receive(self, frame: bytes | bytearray | memoryview) -> RxResult:
        if isinstance(frame, CorruptFrame) and not self.device.registers["RCTL"] & r.RCTL_SBP:
            if self.device.registers["RCTL"] & r.RCTL_EN:
                self.device.stats.add("CRCERRS")
                self.crc_errors += 1
            return RxResult.FILTERED
        return self._receive(frame)
