"""Fault injection for the serving commands: ``--faults PLAN`` and ``--fault-socket PATH``.

Rules:

1. ``FaultSession.for_device(built)`` puts the fault layers on a device the registry built,
   before a loop serves it: every disk backend is wrapped (``FaultyBlockBackend``, named
   ``diskN`` after the AHCI port or ``disk0`` for virtio-blk), the NIC's backend too
   (``FaultyNetBackend``, ``nic0``), and the device's own hooks are registered (e1000:
   link, transmitter, FCS check, overrun; AHCI: a drive reset abandons stuck commands;
   virtio-net: link status, overrun). The swap happens before anything asked the device
   for its backend's descriptor or set its notify hook (the runner's ``attach``), and
   ``BuiltDevice.backends`` then holds the wrappers, so closing the device closes them
   (a clean close writes torn-write tails out) and through them the real backends.
2. ``attach_pci(function)`` adds the ``pci.*`` faults once the server has taken over the
   function's interrupt sinks (the PCI attachments, mpqemu and vfio-user).
3. ``load(plan)`` comes last: a fault this device cannot apply is a ``UsageError`` (the
   command exits 2) before any guest runs. ``served`` is what the loop serves from then on.
4. Without ``--faults`` and ``--fault-socket`` (``from_args`` returns None) nothing is
   installed: the device is served exactly as before.
"""

from __future__ import annotations

import argparse
from typing import Any

from devmodels.faults import FaultControlServer, FaultEngine, FaultPlan, FaultyBlockBackend, FaultyNetBackend
from devmodels.faults import FaultyServedDevice, PciFaults
from devmodels.pci import PciFunction

from .registry import BuiltDevice

__all__ = ["FaultSession", "from_args"]


class FaultSession:
    """The fault layers of one served device (rules 1–3)."""

    def __init__(self, built: BuiltDevice, engine: FaultEngine) -> None:
        self.built = built
        self.engine = engine
        self.disks: list[FaultyBlockBackend] = []
        self.nics: list[FaultyNetBackend] = []
        self.pci: PciFaults | None = None
        self.control: FaultControlServer | None = None
        self.hooks: list[Any] = []
        self._served: FaultyServedDevice | None = None
        self.plan = FaultPlan()
        self.control_path: str | None = None

    @classmethod
    def for_device(cls, built: BuiltDevice, *, seed: int = 0) -> FaultSession:
        """Wrap ``built``'s backends and register its hooks (rule 1)."""
        session = cls(built, FaultEngine(seed))
        wrap = {"ahci": session._ahci, "virtio-blk": session._virtio_blk, "e1000": session._e1000,
                "virtio-net": session._virtio_net}.get(built.name)
        if wrap is not None:
            wrap()
        return session

    def _swap(self, inner: Any, wrapper: Any) -> None:
        self.built.backends = [wrapper if b is inner else b for b in self.built.backends]

    def _disk(self, inner: Any, name: str) -> FaultyBlockBackend:
        wrapper = FaultyBlockBackend(inner, self.engine, name)
        self.disks.append(wrapper)
        self._swap(inner, wrapper)
        return wrapper

    def _nic(self, inner: Any) -> FaultyNetBackend:
        wrapper = FaultyNetBackend(inner, self.engine, "nic0")
        self.nics.append(wrapper)
        self._swap(inner, wrapper)
        return wrapper

    def _ahci(self) -> None:
        from devmodels.ahci.faults import abandon_on_reset

        controller = self.built.served
        for port in controller.ports:  # type: ignore[attr-defined]
            drive = port.drive
            if drive is not None and drive.backend is not None:
                drive.backend = self._disk(drive.backend, f"disk{port.index}")
        abandon_on_reset(controller)  # type: ignore[arg-type]

    def _virtio_blk(self) -> None:
        device = self.built.virtio
        device.backend = self._disk(device.backend, "disk0")

    def _e1000(self) -> None:
        from devmodels.e1000.faults import E1000Faults

        device = self.built.served
        if device.backend is not None:  # type: ignore[attr-defined]
            device.backend = self._nic(device.backend)  # type: ignore[attr-defined]
        self.hooks.append(E1000Faults(device, self.engine))  # type: ignore[arg-type]

    def _virtio_net(self) -> None:
        from virtio.net.faults import VirtioNetFaults

        device = self.built.virtio
        device.backend = self._nic(device.backend)
        self.hooks.append(VirtioNetFaults(device, self.engine))

    # -- rules 2, 3 ----------------------------------------------------------------------------

    def attach_pci(self, function: PciFunction) -> None:
        """Add the ``pci.*`` faults on ``function`` (rule 2)."""
        self.pci = PciFaults(function, self.engine)
        self.pci.install()

    def open_control(self, path: str) -> None:
        """Serve the control socket at ``path`` (``devmodels.faults.control``).

        Raises:
            HostError: the socket cannot be created.
        """
        self.control = FaultControlServer(self.engine, path)

    def load(self, plan: FaultPlan) -> list[str]:
        """Add the plan's faults (rule 3).

        Raises:
            UsageError: a fault this device cannot apply.
        """
        return self.engine.load(plan)

    def start(self, function: PciFunction | None = None, *, timer_thread: bool = False) -> FaultyServedDevice:
        """Attach the PCI layer (with ``function``), load the plan, open the control socket,
        and return what the loop serves (rules 2, 3).

        Raises:
            UsageError: a fault of the plan this device cannot apply.
            HostError: the control socket cannot be created.
        """
        if function is not None:
            self.attach_pci(function)
        self.load(self.plan)
        if self.control_path is not None:
            self.open_control(self.control_path)
        return self.served(timer_thread=timer_thread)

    def served(self, *, timer_thread: bool = False) -> FaultyServedDevice:
        """The device with its engine, for the loop (``FaultyServedDevice``); built once."""
        if self._served is None:
            pci = self.pci
            self._served = FaultyServedDevice(self.built.served, self.engine, control=self.control,
                                              paused=(lambda: pci.paused) if pci is not None else (lambda: False),
                                              timer_thread=timer_thread)
        return self._served

    def counters(self) -> dict[str, int]:
        """For the stats line: faults in effect and how often they acted."""
        return {"faults": len(self.engine), "faults_fired": sum(a.fired for a in self.engine)}

    def close(self) -> None:
        """Stop the timer thread, close the control socket, take the PCI layer off (the
        backend wrappers close with the device: rule 1)."""
        if self._served is not None:
            self._served.close()
        elif self.control is not None:
            self.control.close()
        if self.pci is not None:
            self.pci.uninstall()
        for hook in self.hooks:
            remove = getattr(hook, "remove", None)
            if remove is not None:
                remove()


def from_args(args: argparse.Namespace, built: BuiltDevice) -> FaultSession | None:
    """The session for ``--faults``/``--fault-socket`` with wrappers and hooks installed
    (rule 1), its plan read; None without either (rule 4). ``start`` it once the server
    exists.

    Raises:
        UsageError: the plan cannot be read or is not a plan.
    """
    plan_path = getattr(args, "faults", None)
    socket_path = getattr(args, "fault_socket", None)
    if plan_path is None and socket_path is None:
        return None
    plan = FaultPlan.load(plan_path) if plan_path is not None else FaultPlan()
    session = FaultSession.for_device(built, seed=plan.seed)
    session.plan = plan
    session.control_path = socket_path
    return session
