"""Differential fuzzing of the ring implementations (CONVENTIONS: differential, fuzzing): the Cython twin and the
pure-Python reference replay the same operations (a simulated driver adding buffers, raw
and corrupted descriptors, pops, pushes, notification changes, snapshot/restore) on
identical guest memory; every result, every byte of guest RAM, every queue state and every
broken reason must match. Both must also keep the contract on their own: no exception but
``UsageError`` (host misuse) ever leaves a queue call.

Without the extension only the reference runs (it still checks the contract).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from devmodels import GuestMemory, MemoryRegion, UsageError
from virtio.queue import Virtqueue
from virtio.queue.defs import (
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)
from virtio.queue.ring import IMPLEMENTATIONS
from virtio.testing import DeviceProtocolError, make_driver

RAM = 1 << 18
TABLES = 0x30000  # raw indirect tables live here, 0x100 apart

FLAG_BITS = [VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED]
flags_st = st.lists(st.sampled_from(FLAG_BITS), max_size=4).map(lambda bits: sum(set(bits)))
addr_st = st.sampled_from([0x8000, 0x9000, TABLES, TABLES + 0x100, TABLES + 0x10, RAM - 16, RAM + 0x1000, (1 << 64) - 8])
len_st = st.sampled_from([0, 1, 8, 16, 32, 48, 4096, 0x8000_0000, 0xFFFF_FFFF])
small_st = st.integers(0, 20)

add_st = st.tuples(
    st.just("add"),
    st.lists(st.integers(1, 40), max_size=3),
    st.lists(st.integers(1, 40), max_size=3),
    st.integers(0, 3).map(lambda v: v == 0),  # indirect a quarter of the time
)
raw_st = st.one_of(
    st.tuples(st.just("raw_desc"), small_st, addr_st, len_st, small_st, flags_st, small_st),
    st.tuples(st.just("raw_table"), st.integers(0, 1), st.integers(0, 15), addr_st, len_st, flags_st, small_st),
    st.tuples(st.just("raw_publish"), st.lists(small_st, max_size=4), st.integers(-2, 20)),
    st.tuples(st.just("corrupt"), st.integers(0, 4095), st.integers(0, 255)),
)
extra_st = st.sampled_from(
    [(), ("notify", True), ("notify", False), ("interrupts", True), ("interrupts", False), ("snapshot",)]
)


@st.composite
def rounds(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """One driver/device exchange: adds and a kick, maybe raw damage, pop, push, reap."""
    ops: list[tuple[Any, ...]] = list(draw(st.lists(add_st, min_size=1, max_size=4)))
    ops.append(("kick",))
    if draw(st.integers(0, 3)) == 0:
        ops += draw(st.lists(raw_st, min_size=1, max_size=3))
    ops.append(("pop", draw(st.integers(0, 20))))
    ops.append(("push", draw(st.lists(st.integers(0, 40), max_size=6)), draw(st.booleans())))
    ops.append(("reap",))
    extra = draw(extra_st)
    if extra:
        ops.append(extra)
    return ops


class Universe:
    """One ring implementation with its own RAM, driver and queue."""

    def __init__(self, ring: Any, size: int, packed: bool, event_idx: bool, in_order: bool, indirect: bool) -> None:
        self.ring = ring
        self.packed = packed
        self.memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM)])
        self.driver = make_driver(self.memory, size, packed=packed, event_idx=event_idx, in_order=in_order,
                                  data_base=0x10000, data_size=0x10000)
        self.queue = Virtqueue(size, packed=packed, ring=ring, max_segments=8)
        self.driver.configure(self.queue)
        self.queue.indirect = indirect
        self.inflight: list[Any] = []
        self.popped = 0

    def apply(self, op: tuple[Any, ...]) -> Any:
        try:
            return self._apply(op)
        except UsageError as exc:
            return ("UsageError", str(exc).split(":")[0])
        except DeviceProtocolError as exc:
            return ("DeviceProtocolError", str(exc))

    def _apply(self, op: tuple[Any, ...]) -> Any:
        kind, *args = op
        driver, queue, memory = self.driver, self.queue, self.memory
        if kind == "add":
            readable, writable, indirect = args
            return driver.add([bytes([n]) * n for n in readable], writable, indirect=indirect)
        if kind == "kick":
            return driver.kick()
        if kind == "pop":
            chains = queue.pop_batch(memory, args[0])
            self.inflight += chains
            self.popped += len(chains)
            return [chain.to_tuple() for chain in chains]
        if kind == "push":
            picks, as_ids = args
            if not self.inflight:
                return None
            if queue.in_order:
                chosen = self.inflight[: len(picks)]
            else:
                chosen = list(dict.fromkeys(self.inflight[i % len(self.inflight)] for i in picks))
            used = []
            for k, item in enumerate(chosen):
                if isinstance(item, int):
                    used.append((item, 0))
                else:
                    written = min(item.writable_len, picks[k] * 7) if k < len(picks) else 0
                    used.append((item.head if as_ids else item, written))
            result = queue.push_batch(memory, used)
            for item in chosen:
                self.inflight.remove(item)
            return result
        if kind == "reap":
            return [(u.id, u.written, u.readable, u.writable) for u in driver.reap()]
        if kind == "notify":
            if args[0]:
                return queue.enable_notification(memory)
            return queue.disable_notification(memory)
        if kind == "interrupts":
            return driver.set_interrupts(args[0])
        if kind == "raw_desc":
            index, addr, length, buffer_id, flags, nxt = args
            if self.packed:
                return driver.raw_desc(index % driver.size, addr, length, buffer_id, flags)
            return driver.raw_desc(index % driver.size, addr, length, flags, nxt)
        if kind == "raw_table":
            table, entry, addr, length, flags, nxt = args
            gpa = TABLES + 0x100 * table + 16 * entry
            word = flags if not self.packed else 0
            tail = (nxt if not self.packed else flags) & 0xFFFF
            memory.write(gpa, (addr % (1 << 64)).to_bytes(8, "little") + length.to_bytes(4, "little")
                         + word.to_bytes(2, "little") + tail.to_bytes(2, "little"))
            return None
        if kind == "raw_publish":
            if self.packed:
                return None
            heads, idx = args
            return driver.raw_publish(heads, None if idx < 0 else idx)
        if kind == "corrupt":
            offset, value = args
            span = driver.layout.end - driver.layout.desc_addr
            memory.store_u8(driver.layout.desc_addr + offset % span, value)
            return None
        if kind == "snapshot":
            state = queue.state()
            clone = Virtqueue(queue.max_size, packed=self.packed, ring=self.ring, max_segments=8)
            clone.restore(state)
            self.queue = clone
            self.inflight = [item if isinstance(item, int) else item.head for item in self.inflight]
            return state
        raise AssertionError(kind)

    def observe(self) -> Any:
        reason = self.queue.broken_reason
        return (self.queue.state(), type(reason).__name__, str(reason), bytes(self.memory.regions[0].buffer))


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    packed = draw(st.booleans())
    size = draw(st.integers(1, 12)) if packed else draw(st.sampled_from([1, 2, 4, 8, 16]))
    return {
        "size": size,
        "packed": packed,
        "event_idx": draw(st.booleans()),
        "in_order": draw(st.booleans()),
        "indirect": draw(st.integers(0, 5)) > 0,
        "ops": [op for exchange in draw(st.lists(rounds(), min_size=1, max_size=8)) for op in exchange],
    }


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_rings_agree_and_keep_the_contract(scenario: dict[str, Any]) -> None:
    ops = scenario.pop("ops")
    universes = [Universe(ring, **scenario) for _, ring in sorted(IMPLEMENTATIONS.items())]
    for op in ops:
        results = [universe.apply(op) for universe in universes]
        observed = [universe.observe() for universe in universes]
        for other_result, other_observed in zip(results[1:], observed[1:], strict=True):
            assert other_result == results[0], op
            assert other_observed[:3] == observed[0][:3], op
            assert other_observed[3] == observed[0][3], f"guest RAM differs after {op}"
    event(f"ended {observed[0][1]}")
    event(f"popped chains: {bool(universes[0].popped)}")


@settings(max_examples=150, deadline=None)
@given(
    size=st.sampled_from([2, 4, 8]),
    descs=st.lists(st.tuples(addr_st, len_st, flags_st, small_st), min_size=1, max_size=8),
    heads=st.lists(small_st, min_size=1, max_size=8),
    table=st.lists(st.tuples(addr_st, len_st, flags_st, small_st), max_size=6),
)
def test_random_split_ring_memory(size: int, descs: list[Any], heads: list[int], table: list[Any]) -> None:
    """Arbitrary descriptor tables and heads, without the simulator's help."""
    outcomes = []
    for _, ring in sorted(IMPLEMENTATIONS.items()):
        universe = Universe(ring, size, False, False, False, True)
        for j, (addr, length, flags, nxt) in enumerate(table):
            universe.apply(("raw_table", 0, j, addr, length, flags, nxt))
        for i, (addr, length, flags, nxt) in enumerate(descs):
            universe.apply(("raw_desc", i, addr, length, 0, flags, nxt))
        universe.apply(("raw_publish", heads, -1))
        chains = universe.apply(("pop", 16))
        pushed = universe.apply(("push", list(range(len(chains))), False))
        outcomes.append((chains, pushed, universe.observe()))
    assert all(outcome == outcomes[0] for outcome in outcomes)
