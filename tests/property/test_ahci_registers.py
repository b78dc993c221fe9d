"""Hypothesis: random ABAR access sequences never raise, keep the register invariants, can
always be snapshotted once quiesced, and a full libahci bring-up works afterwards."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import from_dict, to_dict
from devmodels.ahci import AhciController, AhciState, AtaDisk, AtapiCdrom
from devmodels.ahci import regs as r
from tests.unit.devmodels.ahci.doubles import DMA_BASE, RAM_SIZE, Rig, ScriptedDisk

PORT_OFFSETS = [r.PxCLB, r.PxCLBU, r.PxFB, r.PxFBU, r.PxIS, r.PxIE, r.PxCMD, r.PxTFD, r.PxSIG, r.PxSSTS,
                r.PxSCTL, r.PxSERR, r.PxSACT, r.PxCI, r.PxSNTF]

offsets = st.one_of(
    st.sampled_from([r.CAP, r.GHC, r.IS, r.PI, r.VS, r.CAP2, r.BOHC]),
    st.builds(lambda port, off: r.PORT_BASE + port * r.PORT_STRIDE + off, st.integers(0, 2), st.sampled_from(PORT_OFFSETS)),
    st.integers(0, 0xFFF),
)
values = st.one_of(
    st.integers(0, 0xFFFF_FFFF),
    st.sampled_from([0, 1, 0xFFFF_FFFF, r.PxCMD_ST | r.PxCMD_FRE | r.PxCMD_SUD, 0x301, 0x300, r.GHC_HR,
                     r.GHC_IE | r.GHC_AE, DMA_BASE]),
)
op = st.tuples(st.sampled_from(["read", "write", "poll", "release"]), offsets, st.sampled_from([1, 2, 4, 8]), values)


def check_invariants(rig: Rig) -> None:
    hba = rig.hba
    assert hba.read(r.GHC, 4) & r.GHC_AE
    assert not hba.read(r.IS, 4) & ~hba.implemented
    for port in hba.ports:
        cmd = port.regs["PxCMD"]
        if not cmd & r.PxCMD_ST:
            assert not port.regs["PxCI"] and not port.regs["PxSACT"]
            assert bool(cmd & r.PxCMD_CR) == port.busy
        assert bool(cmd & r.PxCMD_FR) == bool(cmd & r.PxCMD_FRE)
        assert cmd & r.PxCMD_POD


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(op, max_size=40))
def test_random_register_sequences(ops) -> None:
    disk = ScriptedDisk(1 << 20, auto=False)
    rig = Rig(disk=disk, ports=3, start=False)
    # point every port at real structures half the time, so random doorbells do something
    for port in range(3):
        rig.hba.write(r.PORT_BASE + port * r.PORT_STRIDE + r.PxCLB, 4, DMA_BASE + port * 0x1000)
        rig.hba.write(r.PORT_BASE + port * r.PORT_STRIDE + r.PxFB, 4, DMA_BASE + 0x4000 + port * 0x100)
    for kind, offset, size, value in ops:
        offset -= offset % size  # the bus delivers naturally aligned accesses
        if kind == "read":
            assert 0 <= rig.hba.read(offset, size) < 1 << (8 * size)
        elif kind == "write":
            rig.hba.write(offset, size, value & ((1 << (8 * size)) - 1))
        elif kind == "poll":
            rig.hba.poll()
        else:
            disk.release()
        check_invariants(rig)
    disk.auto = True
    rig.hba.poll()
    assert not rig.hba.busy
    state = rig.hba.state()
    again = from_dict(AhciState, to_dict(state))
    twin = AhciController(rig.memory, ports=3)
    twin.attach(0, AtaDisk(rig.disk))
    twin.attach(1, AtapiCdrom(rig.cd))
    twin.restore(again)
    assert twin.state() == state
    # and the controller still comes up the way Linux brings it up
    rig.driver = type(rig.driver).for_controller(rig.hba, rig.memory, DMA_BASE + (1 << 20), RAM_SIZE - DMA_BASE - (1 << 20))
    rig.driver.reset_hba()
    assert rig.driver.start_port(0) == 0x101
    assert rig.driver.identify(0)[0].ok
