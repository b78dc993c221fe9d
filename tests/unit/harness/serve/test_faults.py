"""``--faults``/``--fault-socket`` on the serving commands (``harness.serve.faults``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from devmodels.ahci.testing import AhciDriver
from devmodels.ahci import defs as d
from devmodels.faults import FaultClient, FaultPlan, FaultyBlockBackend, FaultyNetBackend
from devmodels.testdev import regs as r
from harness.serve.faults import FaultSession
from harness.serve.registry import build

ROOT = Path(__file__).resolve().parents[4]
RAM = 16 << 20


def memory() -> GuestMemory:
    return GuestMemory([MemoryRegion.from_bytearray(0, RAM)])


def test_every_disk_and_nic_is_wrapped_before_serving() -> None:
    mem = memory()
    ahci = build("ahci", mem, ["mem:1M", "mem:2M"])
    session = FaultSession.for_device(ahci)
    drives = [p.drive for p in ahci.served.ports[:2]]  # type: ignore[attr-defined]
    assert [type(dr.backend) for dr in drives] == [FaultyBlockBackend, FaultyBlockBackend]
    assert [dr.backend.name for dr in drives] == ["disk0", "disk1"]
    assert ahci.backends == [dr.backend for dr in drives]
    ahci.close()
    session.close()
    blk = build("virtio-blk", mem, ["mem:1M"])
    FaultSession.for_device(blk)
    assert isinstance(blk.virtio.backend, FaultyBlockBackend) and blk.backends == [blk.virtio.backend]
    blk.close()
    for name in ("e1000", "virtio-net"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        nic = build(name, mem, [f"socket-fd:{a.detach()}"])
        FaultSession.for_device(nic)
        device = nic.virtio if name == "virtio-net" else nic.served
        assert isinstance(device.backend, FaultyNetBackend) and nic.backends == [device.backend]
        nic.close()
        b.close()


def test_a_media_error_through_the_built_controller() -> None:
    mem = memory()
    ahci = build("ahci", mem, ["mem:4M"], ["posted=off"])
    session = FaultSession.for_device(ahci)
    session.load(FaultPlan.from_dict({"faults": [{"kind": "disk.media-error", "lba": 300, "target": "disk0"}]}))
    driver = AhciDriver.for_controller(ahci.served, mem, 8 << 20, 8 << 20)
    driver.reset_hba()
    driver.start_port(0)
    buf = driver.alloc(8 * 512)
    result = driver.rw_dma(0, 296, 8, buf, write=False)
    assert (result.status, result.error) == (d.STATUS_ERR, d.ATA_UNC)
    driver.recover(0)
    assert driver.rw_dma(0, 304, 8, buf, write=False).ok
    ahci.close()


def test_faults_a_device_cannot_apply_are_refused() -> None:
    testdev = build("testdev", memory())
    session = FaultSession.for_device(testdev)
    with pytest.raises(UsageError, match="cannot apply disk.media-error"):
        session.load(FaultPlan.from_dict({"faults": [{"kind": "disk.media-error"}]}))
    with pytest.raises(UsageError, match="cannot apply net.link-down"):
        session.load(FaultPlan.from_dict({"faults": [{"kind": "net.link-down"}]}))


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_a_bad_plan_exits_2_on_every_command(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "pci.no-response"}]}))
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    commands = [
        ["vfio-user", "--socket-path", str(tmp_path / "v.sock"), "--device", "testdev", "--faults",
         str(tmp_path / "missing.json")],
        ["vhost-user", "--socket", str(tmp_path / "vu.sock"), "--device", "virtio-blk", "--backend",
         f"file:{image}", "--faults", str(plan)],
    ]
    wants = ["missing.json", "cannot apply pci.no-response"]
    a, b = socket.socketpair()
    commands.append(["mpqemu", "--fd", str(a.fileno()), "--device", "testdev", "--faults", str(tmp_path)])
    wants.append(str(tmp_path))
    for argv, want in zip(commands, wants, strict=True):
        proc = subprocess.run([sys.executable, "-m", "devmodels", *argv], capture_output=True, text=True,
                              env=_env(), timeout=60, pass_fds=[a.fileno()])
        assert proc.returncode == 2, proc.stderr
        assert want in proc.stderr
    a.close()
    b.close()


def test_vfio_user_server_with_a_plan_and_the_control_socket(tmp_path: Path) -> None:
    """The server layer for real: a client in this process, the device in another, faults
    added and armed from a third party through the control socket."""
    from devmodels import Machine
    from passthrough import VfioPciDevice
    from passthrough.user import VfioUserClient

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"seed": 1, "faults": [{"kind": "pci.no-response", "id": "dead", "armed": False}]}))
    path, control = tmp_path / "testdev.sock", tmp_path / "faults.sock"
    proc = subprocess.Popen([sys.executable, "-m", "devmodels", "vfio-user", f"--socket-path={path}",
                             "--device=testdev", f"--faults={plan}", f"--fault-socket={control}"],
                            env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "serving testdev" in proc.stderr.readline()
        machine = Machine(ram_size=4 << 20, ram_backing="memfd")
        device = VfioPciDevice(VfioUserClient.connect(str(path), timeout=30))
        device.map_memory(machine.memory)
        machine.add_pci(device)
        info = next(i for i in machine.enumerate() if i.vendor_id == r.TESTDEV_VENDOR_ID)
        bar0 = next(b.address for b in info.bars if b.index == 0)
        assert bar0 is not None
        assert machine.mmio.read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
        with FaultClient(control) as client:
            assert [f["id"] for f in client.list()] == ["dead"]
            client.arm("dead")
            assert machine.mmio.read(bar0 + r.ID, 4) == 0xFFFF_FFFF
            machine.mmio.write(bar0 + r.SCRATCH, 4, 0x55)
            client.remove("dead")
            assert machine.mmio.read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
            assert machine.mmio.read(bar0 + r.SCRATCH, 4) == 0  # the write was dropped
            client.add({"kind": "pci.lost-irq", "count": 2})
        os.kill(proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        line = ""
        while "stats:" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        assert "faults=1" in line and "faults_fired=0" in line
        device.close()
        machine.close()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not control.exists()


def test_vhost_user_blk_process_with_a_media_error_and_a_slow_read(tmp_path: Path) -> None:
    """Disk faults over vhost-user, where the loop has no timers of its own: the slow read
    is released by the fault engine's timer thread."""
    from virtio.blk.layouts import VIRTIO_BLK_REQ_HDR
    from virtio.blk.defs import VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN
    from virtio.defs import VIRTIO_F_EVENT_IDX, VIRTIO_F_RING_PACKED
    from virtio.testing import make_driver
    from virtio.vhost_user.testing import FakeFrontEnd, SharedRam

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "disk.media-error", "lba": 8, "sectors": 8},
                                           {"kind": "disk.slow", "lba": 16, "sectors": 8, "delay_ms": 400}]}))
    path = tmp_path / "vu.sock"
    proc = subprocess.Popen([sys.executable, "-m", "devmodels", "vhost-user", "--socket", str(path), "--device",
                             "virtio-blk", "--backend", f"file:{image}", "--faults", str(plan)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), cwd=ROOT)
    ram = SharedRam.create()
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        fe = FakeFrontEnd(sock, ram, timeout=10.0)
        features = fe.get_features() & ~(1 << VIRTIO_F_RING_PACKED | 1 << VIRTIO_F_EVENT_IDX)
        fe.handshake(features)
        driver = make_driver(ram.memory, 64, base=0x100000)
        fe.setup_ring(0, driver)
        start = time.monotonic()
        for sector in (0, 8, 16, 24):
            driver.add([VIRTIO_BLK_REQ_HDR.pack(VIRTIO_BLK_T_IN, 0, sector)], [4096, 1], token=sector)
        driver.kick()
        fe.kick(0)
        status: dict[int, tuple[int, float]] = {}
        while len(status) < 4 and time.monotonic() - start < 20:
            fe.wait_call(0, timeout=1.0)
            for used in driver.reap():
                status[used.token] = (ram.memory.load_u8(used.writable[-1][0]), time.monotonic() - start)
        assert {s: code for s, (code, _) in status.items()} == {0: VIRTIO_BLK_S_OK, 8: VIRTIO_BLK_S_IOERR,
                                                                16: VIRTIO_BLK_S_OK, 24: VIRTIO_BLK_S_OK}
        assert status[16][1] >= 0.4 > status[24][1]
        fe.close()
    finally:
        ram.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        if proc.stderr is not None:
            proc.stderr.close()


def test_mpqemu_server_applies_pci_faults_between_the_proxy_and_the_function(tmp_path: Path) -> None:
    from devmodels.pci import defs as p
    from mpqemu.testing import FakeProxy

    control = tmp_path / "faults.sock"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"faults": [{"kind": "pci.no-response", "id": "dead", "armed": False}]}))
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "devmodels", "mpqemu", "--fd", str(ours.fileno()), "--device",
                             "testdev", "--faults", str(plan), "--fault-socket", str(control)],
                            pass_fds=[ours.fileno()], env=_env())
    ours.close()
    bar0 = 0xFEBF_0000
    try:
        proxy = FakeProxy(theirs, timeout=60)
        proxy.config_write(p.PCI_BASE_ADDRESS_0, bar0, 4)
        proxy.config_write(p.PCI_COMMAND, p.PCI_COMMAND_MEMORY, 2)
        assert proxy.bar_read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
        with FaultClient(control) as client:
            client.arm("dead")
            assert proxy.bar_read(bar0 + r.ID, 4) == 0xFFFF_FFFF
            assert proxy.config_read(p.PCI_VENDOR_ID, 2) == 0xFFFF
            client.remove("dead")
        assert proxy.bar_read(bar0 + r.ID, 4) == r.TESTDEV_MAGIC
    finally:
        theirs.close()
        assert proc.wait(60) == 0


def test_a_slow_disk_under_the_device_runner_completes_at_its_deadline() -> None:
    """The runner's path: the engine's deadline is the served device's, its timer releases
    the completion, the waker gets the controller to collect it."""
    from devmodels.runtime import DeviceRunner, EventLoop

    mem = memory()
    ahci = build("ahci", mem, ["mem:4M"], ["posted=off"])
    session = FaultSession.for_device(ahci)
    served = session.start()
    session.load(FaultPlan.from_dict({"faults": [{"kind": "disk.slow", "lba": 64, "sectors": 8, "delay_ms": 300}]}))
    loop = EventLoop()
    runner = DeviceRunner(served, loop)
    runner.attach()
    hba = ahci.served
    AhciDriver.for_controller(hba, mem, 8 << 20, 8 << 20)  # memory decode and bus mastering

    def access(fn, *args):  # type: ignore[no-untyped-def]  # what a server does around each access
        runner.before_access()
        result = fn(*args)
        runner.after_access()
        return result

    driver = AhciDriver(lambda o, s: access(hba.read, o, s), lambda o, s, v: access(hba.write, o, s, v), mem,
                        8 << 20, 8 << 20, poll=lambda: loop.run_once(0.01))
    try:
        driver.reset_hba()
        driver.start_port(0)
        buf = driver.alloc(4096)
        begin = time.monotonic()
        assert driver.rw_dma(0, 0, 8, buf, write=False).ok
        fast = time.monotonic() - begin
        begin = time.monotonic()
        assert driver.rw_dma(0, 64, 8, buf, write=False).ok
        slow = time.monotonic() - begin
        assert slow >= 0.3 > fast
    finally:
        runner.close()
        session.close()
        ahci.close()
        loop.close()
