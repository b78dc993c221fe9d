"""Migration between two vfio-user servers through the devices' snapshot contract."""

from __future__ import annotations

import errno
import json

import pytest

from devmodels import HostError, to_dict
from devmodels.backends import MemoryDiskBackend
from devmodels.e1000 import E1000
from devmodels.e1000 import regs as er
from devmodels.testdev import PciTestDevice
from devmodels.testdev import regs as r
from passthrough.defs import (
    VFIO_DEVICE_FEATURE_GET,
    VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
    VFIO_DEVICE_FEATURE_MIGRATION,
    VFIO_DEVICE_FEATURE_PROBE,
    VFIO_DEVICE_FEATURE_SET,
    VFIO_DEVICE_STATE_ERROR,
    VFIO_DEVICE_STATE_PRE_COPY,
    VFIO_DEVICE_STATE_RESUMING,
    VFIO_DEVICE_STATE_RUNNING,
    VFIO_DEVICE_STATE_STOP,
    VFIO_DEVICE_STATE_STOP_COPY,
    VFIO_MIGRATION_STOP_COPY,
    VFIO_USER_DEVICE_FEATURE,
    VFIO_USER_MIG_DATA_READ,
    VFIO_USER_MIG_DATA_WRITE,
)
from passthrough.errors import VfioUserError
from passthrough.layouts import vfio_device_feature_mig_state, vfio_user_device_feature, vfio_user_mig_data
from passthrough.user import DmaMemory, VfioUserClient, VfioUserServer
from passthrough.user.migration import LEGACY_FORMAT
from passthrough.user.testing import RawPeer, ServerThread
from virtio.blk import VirtioBlkDevice
from virtio.transport import VirtioPciFunction


class Side:
    def __init__(self, function_factory=PciTestDevice) -> None:  # type: ignore[no-untyped-def]
        self.memory = DmaMemory()
        self.device = function_factory(self.memory)
        self.server = VfioUserServer(self.device, self.memory)
        self.thread = ServerThread(self.server)
        self.client = VfioUserClient(self.thread.start(), timeout=20)

    def close(self) -> None:
        self.client.close()
        assert self.thread.join()
        assert self.thread.error is None


@pytest.fixture
def pair():
    source, destination = Side(), Side()
    yield source, destination
    source.close()
    destination.close()


def test_state_moves_between_servers(pair) -> None:  # type: ignore[no-untyped-def]
    source, destination = pair
    assert source.client.migration_flags() & VFIO_MIGRATION_STOP_COPY
    source.client.region_write(0, r.SCRATCH, (0xFEED).to_bytes(4, "little"))
    source.client.region_write(0, r.DMA_SRC, (0x1234_5678_9ABC).to_bytes(8, "little"))
    source.client.region_write(2, 0, (0xFEE0_1000).to_bytes(4, "little"))  # MSI-X table: dropped by the server
    source.client.region_write(7, 4, (0x6).to_bytes(2, "little"))  # Command
    assert source.client.migration_state() == VFIO_DEVICE_STATE_RUNNING
    blob = source.client.save_device_state()
    assert source.client.migration_state() == VFIO_DEVICE_STATE_STOP
    header = json.loads(blob)
    assert (header["format"], header["version"], header["kind"]) == ("devmodels-snapshot", 1, "testdev")
    destination.client.load_device_state(blob)
    destination.client.set_migration_state(VFIO_DEVICE_STATE_RUNNING)
    assert destination.device.registers["SCRATCH"] == 0xFEED
    assert destination.device.registers["DMA_SRC"] == 0x1234_5678_9ABC
    assert destination.device.command == 6
    assert destination.device.state() == source.device.state()


def test_running_to_stop_copy_goes_through_stop(pair) -> None:  # type: ignore[no-untyped-def]
    source, _ = pair
    source.client.set_migration_state(VFIO_DEVICE_STATE_STOP_COPY)
    assert source.client.migration_state() == VFIO_DEVICE_STATE_STOP_COPY
    source.client.set_migration_state(VFIO_DEVICE_STATE_RUNNING)  # via STOP
    assert source.client.migration_state() == VFIO_DEVICE_STATE_RUNNING


@pytest.mark.parametrize("state", [VFIO_DEVICE_STATE_ERROR, VFIO_DEVICE_STATE_PRE_COPY, 99])
def test_states_that_cannot_be_requested(pair, state: int) -> None:  # type: ignore[no-untyped-def]
    source, _ = pair
    with pytest.raises(VfioUserError) as info:
        source.client.set_migration_state(state)
    assert info.value.errno == errno.EINVAL
    assert source.client.migration_state() == VFIO_DEVICE_STATE_RUNNING


@pytest.mark.parametrize(
    "blob",
    [b"not json", b'{"format":"other"}', json.dumps({"format": "devmodels-vfio-user-migration", "version": 1, "device": "E1000", "state": {}}).encode()],
)
def test_bad_migration_data_fails_into_error_until_reset(pair, blob: bytes) -> None:  # type: ignore[no-untyped-def]
    _, destination = pair
    destination.client.region_write(0, r.SCRATCH, (7).to_bytes(4, "little"))
    with pytest.raises(VfioUserError):
        destination.client.load_device_state(blob)
    assert destination.client.migration_state() == VFIO_DEVICE_STATE_ERROR
    assert destination.device.registers["SCRATCH"] == 7  # nothing applied
    with pytest.raises(VfioUserError):
        destination.client.set_migration_state(VFIO_DEVICE_STATE_RUNNING)
    destination.client.reset()
    assert destination.client.migration_state() == VFIO_DEVICE_STATE_RUNNING


def test_tampered_state_is_rejected_by_restore(pair) -> None:  # type: ignore[no-untyped-def]
    source, destination = pair
    document = json.loads(source.client.save_device_state())
    registers = document["state"]["registers"]
    registers[0][1] = 0xBAD  # the ID register is read-only: restore must refuse
    with pytest.raises(VfioUserError):
        destination.client.load_device_state(json.dumps(document).encode())
    assert destination.device.registers["ID"] == r.TESTDEV_MAGIC


def _raw() -> tuple[RawPeer, ServerThread]:
    memory = DmaMemory()
    thread = ServerThread(VfioUserServer(PciTestDevice(memory), memory, max_data_xfer_size=4096))
    peer = RawPeer(thread.start())
    peer.negotiate()
    return peer, thread


def feature(peer: RawPeer, flags: int, data: bytes = b"", argsz: int = 64):  # type: ignore[no-untyped-def]
    return peer.request(VFIO_USER_DEVICE_FEATURE, vfio_user_device_feature.pack(argsz, flags) + data)


def test_feature_and_data_messages_are_checked() -> None:
    peer, thread = _raw()
    assert feature(peer, VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION).payload[4:8] == (
        (VFIO_DEVICE_FEATURE_PROBE | VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION).to_bytes(4, "little")
    )
    for flags, code in [
        (VFIO_DEVICE_FEATURE_GET | 9, errno.ENOTSUP),  # unknown feature
        (VFIO_DEVICE_FEATURE_MIGRATION, errno.EINVAL),  # no operation
        (VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, errno.EINVAL),
        (VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIGRATION, errno.ENOTSUP),
        (VFIO_DEVICE_FEATURE_GET | 1 << 20 | VFIO_DEVICE_FEATURE_MIGRATION, errno.EINVAL),
    ]:
        reply = feature(peer, flags)
        assert reply.is_error and reply.error_no == code, hex(flags)
    reply = feature(peer, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, argsz=12)
    assert reply.is_error and reply.error_no == errno.EINVAL  # too small for the reply
    reply = feature(peer, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, b"\x01")  # short state
    assert reply.is_error and reply.error_no == errno.EINVAL
    # Data messages in the wrong state.
    reply = peer.request(VFIO_USER_MIG_DATA_READ, vfio_user_mig_data.pack(72, 64))
    assert reply.is_error and reply.error_no == errno.EINVAL
    reply = peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, 3) + b"abc")
    assert reply.is_error and reply.error_no == errno.EINVAL
    # Resuming: size must match the data; reads above max_data_xfer_size are refused.
    state = vfio_device_feature_mig_state.pack(VFIO_DEVICE_STATE_RESUMING, -1)
    assert not feature(peer, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, state).is_error
    reply = peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, 5) + b"abc")
    assert reply.is_error and reply.error_no == errno.EINVAL
    state = vfio_device_feature_mig_state.pack(VFIO_DEVICE_STATE_STOP_COPY, -1)
    assert feature(peer, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, state).is_error  # via STOP: restore of nothing fails
    peer.close()
    assert thread.join()


def test_incoming_migration_data_is_bounded() -> None:
    memory = DmaMemory()
    server = VfioUserServer(PciTestDevice(memory), memory)
    server.migration.max_bytes = 100
    thread = ServerThread(server)
    peer = RawPeer(thread.start())
    peer.negotiate()
    feature(peer, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, vfio_device_feature_mig_state.pack(VFIO_DEVICE_STATE_STOP, -1))
    feature(peer, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, vfio_device_feature_mig_state.pack(VFIO_DEVICE_STATE_RESUMING, -1))
    assert not peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, 60) + bytes(60)).is_error
    reply = peer.request(VFIO_USER_MIG_DATA_WRITE, vfio_user_mig_data.pack(8, 60) + bytes(60))
    assert reply.is_error and reply.error_no == errno.E2BIG
    peer.close()
    assert thread.join()


# -- the snapshot contract through migration (issue 15) ---------------------------------------


def test_stop_quiesces_the_device_before_its_state_is_saved() -> None:
    """RUNNING -> STOP runs the device's posted work (state() refuses while any waits)."""
    side = Side(lambda memory: E1000(memory, posted_writes=True))
    try:
        side.client.region_write(0, er.TDT, (0).to_bytes(4, "little"))  # posted: nothing has run it yet
        assert side.device.posted
        side.client.set_migration_state(VFIO_DEVICE_STATE_STOP)
        assert not side.device.posted
        assert json.loads(side.client.save_device_state())["kind"] == "e1000"
    finally:
        side.close()


class _Stuck(PciTestDevice):
    def quiesce(self) -> None:
        raise HostError("a backend never completes")


def test_a_device_that_cannot_quiesce_fails_the_stop_arc() -> None:
    side = Side(_Stuck)
    try:
        with pytest.raises(VfioUserError) as info:
            side.client.set_migration_state(VFIO_DEVICE_STATE_STOP)
        assert info.value.errno == errno.EIO
        assert side.client.migration_state() == VFIO_DEVICE_STATE_ERROR
    finally:
        side.close()


def _legacy(state: dict, device: str) -> bytes:
    """A migration document as the server wrote it before states carried args."""
    return json.dumps({"format": LEGACY_FORMAT, "version": 1, "device": device, "state": state}).encode()


def _without_args(state: dict) -> dict:
    out = {k: _without_args(v) if isinstance(v, dict) else v for k, v in state.items() if k != "args"}
    if "args" in state:
        out["version"] = 1
    return out


def test_documents_of_the_earlier_format_still_load() -> None:
    source, destination = Side(lambda memory: E1000(memory)), Side(lambda memory: E1000(memory))
    try:
        source.client.region_write(0, er.RDTR, (0x55).to_bytes(4, "little"))
        source.device.quiesce()
        state = to_dict(source.device.state())
        destination.client.load_device_state(_legacy(_without_args(state), "E1000"))
        assert to_dict(destination.device.state()) == state
        with pytest.raises(VfioUserError):
            destination.client.load_device_state(_legacy(_without_args(state), "PciTestDevice"))
    finally:
        source.close()
        destination.close()


def test_earlier_virtio_documents_load_with_the_nested_device_section() -> None:
    def function(memory):  # type: ignore[no-untyped-def]
        return VirtioPciFunction(VirtioBlkDevice(memory, MemoryDiskBackend(1 << 20)))

    source, destination = Side(function), Side(function)
    try:
        state = to_dict(source.device.state())
        assert state["device"]["device"]["args"]["num_queues"] == 1
        destination.client.load_device_state(_legacy(_without_args(state), "VirtioPciFunction"))
        assert to_dict(destination.device.state()) == state
    finally:
        source.close()
        destination.close()
