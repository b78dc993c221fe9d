"""Shared fixtures for the e1000 unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devmodels import Machine
from devmodels.backends.net import LoopbackBackend
from devmodels.e1000 import E1000
from devmodels.e1000.testing import E1000Driver


class Rig:
    """A machine with an e1000 whose backend is one end of a loopback pair."""

    def __init__(self, *, msi: bool = False, mitigation: bool = True, ram: int = 16 << 20) -> None:
        self.machine = Machine(ram_size=ram, ram_backing="bytearray")
        self.host, self.wire = LoopbackBackend.pair(capacity=4096)
        self.device = E1000(self.machine.memory, self.wire, msi=msi, mitigation=mitigation)
        self.machine.add_pci(self.device)
        self.driver = E1000Driver(self.machine, self.device)

    def up(self, **open_args: int | bool) -> E1000Driver:
        """Probe and open the driver and bring the link up in its view."""
        self.driver.probe()
        self.driver.open(**open_args)  # type: ignore[arg-type]
        self.driver.poll()
        assert self.driver.link
        return self.driver

    def sent(self) -> list[bytes]:
        """Frames the device put on the wire."""
        return self.host.receive(4096)

    def close(self) -> None:
        self.host.close()
        self.wire.close()
        self.machine.close()


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def up(rig: Rig) -> Rig:
    rig.up()
    return rig
