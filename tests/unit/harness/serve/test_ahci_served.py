"""AHCI built by the registry (``--opt`` handling) and served by ``DeviceRunner`` behind an
in-process mpqemu server and a fake proxy; the event loop's busy polling."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devmodels import GuestMemory, HostError, MemoryRegion, UsageError
from devmodels.ahci import TaskFile
from devmodels.ahci import defs as d
from devmodels.ahci import regs as r
from devmodels.ahci.testing import AhciDriver
from devmodels.pci import defs as p
from devmodels.runtime import DeviceRunner, EventLoop
from harness.serve.registry import BuiltDevice, build
from mpqemu.testing import Harness

ABAR = 0xFEBF_0000
RAM = 16 << 20


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(1 << 20))
    return path


def _served(image: Path, *opts: str) -> BuiltDevice:
    return build("ahci", GuestMemory(), [f"file:{image}"], list(opts))


def test_default_options_post_writes_and_read_cached_data_inline(image: Path) -> None:
    served = _served(image)
    try:
        assert served.function.posted_writes
        assert served.backends[0].reads_inline == hasattr(os, "RWF_NOWAIT")
    finally:
        served.close()


def test_options_turn_posting_and_inline_reads_off(image: Path) -> None:
    served = _served(image, "posted=off", "inline-reads=off", "workers=2")
    try:
        assert not served.function.posted_writes
        assert not served.backends[0].reads_inline
    finally:
        served.close()


def test_direct_images_are_never_read_inline(image: Path) -> None:
    try:
        served = _served(image, "direct=on")
    except HostError:
        pytest.skip("this filesystem has no O_DIRECT")
    try:
        assert served.backends[0].direct and not served.backends[0].reads_inline
    finally:
        served.close()


def test_bad_option_values_are_usage_errors(image: Path) -> None:
    with pytest.raises(UsageError):
        _served(image, "posted=maybe")


class _Rig:
    """The served AHCI in an in-process server (hooks as the CLI installs them), guest RAM
    shared through SYNC_SYSMEM, and a libahci-like driver whose accesses go through the proxy."""

    def __init__(self, image: Path, *opts: str) -> None:
        self.memory = GuestMemory()
        self.served = build("ahci", self.memory, [f"file:{image}"], list(opts))
        assert self.served.function is not None
        self.h = Harness(self.served.function, self.memory)
        self.runner = DeviceRunner(self.served.served, self.h.server.loop)
        self.runner.attach()
        self.h.server.before_dispatch.append(self.runner.before_access)
        self.h.server.after_dispatch.append(self.runner.after_access)
        self.ram = MemoryRegion.memfd(0, RAM)
        assert self.ram.fd is not None
        proxy = self.h.proxy
        proxy.sync_sysmem([(0, RAM, 0, self.ram.fd)])
        proxy.config_write(p.PCI_BASE_ADDRESS_0 + 4 * r.AHCI_ABAR_INDEX, ABAR, 4)
        proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY | p.PCI_COMMAND_MASTER, 2)
        self.driver = AhciDriver(
            lambda offset, size: proxy.bar_read(ABAR + offset, size),
            lambda offset, size, value: proxy.bar_write(ABAR + offset, value, size) and None,
            GuestMemory([self.ram]),
            8 << 20,
            8 << 20,
            poll=lambda: self.h.pump(4),
        )
        self.driver.reset_hba()
        self.driver.start_port(0)

    def close(self) -> None:
        self.h.close()
        self.runner.close()
        self.served.close()
        self.ram.close()


@pytest.mark.parametrize("opts", [(), ("posted=off",), ("inline-reads=off",), ("posted=off", "inline-reads=off")])
def test_ncq_read_through_the_proxy(image: Path, opts: tuple[str, ...]) -> None:
    rig = _Rig(image, *opts)
    try:
        drv = rig.driver
        bufs = [drv.alloc(4096, 4096) for _ in range(4)]
        for tag, buf in enumerate(bufs):
            drv.fpdma(0, tag, 8 * tag + 8, 8, buf, write=False)
            drv.issue(0, 1 << tag, queued=True)
        drv.wait(lambda: not drv.preg(0, r.PxSACT), "the queued reads")
        data = image.read_bytes()
        for tag, buf in enumerate(bufs):
            assert drv.memory.read(buf, 4096) == data[4096 * (tag + 1) : 4096 * (tag + 2)]
        assert drv.reg(r.IS) == 1 and not drv.preg(0, r.PxIS) & r.PxIS_FATAL
        counters = rig.served.counters()
        assert counters["inline_reads"] + counters["delegated_reads"] == (0 if "inline-reads=off" in opts else 4)
    finally:
        rig.close()


def test_a_posted_command_runs_right_after_the_reply(image: Path) -> None:
    rig = _Rig(image)
    try:
        drv = rig.driver
        drv.prepare(0, 0, TaskFile(command=d.ATA_CMD_CHK_POWER))
        drv.set_preg(0, r.PxCI, 1)  # one message: after its reply the glue polled
        assert not rig.served.served.posted
        assert rig.served.function.ports[0].regs["PxCI"] == 0  # type: ignore[union-attr]
    finally:
        rig.close()


def test_busy_polling_loop_dispatches_readers_and_timers() -> None:
    loop = EventLoop(poll_ns=200_000)
    seen: list[str] = []
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        loop.add_reader(efd, lambda: seen.append(f"read {os.eventfd_read(efd)}"))
        loop.run_once(0)  # nothing ready, no window with a zero timeout
        os.eventfd_write(efd, 2)
        loop.run_once(5.0)
        loop.call_at(loop.now_ns(), lambda: seen.append("timer"))
        loop.run_once()
        assert seen == ["read 2", "timer"]
    finally:
        loop.remove_reader(efd)
        os.close(efd)
        loop.close()


def test_negative_poll_window_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        EventLoop(poll_ns=-1)
