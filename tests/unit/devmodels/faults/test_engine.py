"""The fault engine: windows, decisions, state faults, timers (``devmodels.faults.engine``)."""

from __future__ import annotations

import pytest

from devmodels import UsageError
from devmodels.faults import ActiveFault, FaultEngine, FaultPlan, FrameDrop, LinkDown, MediaError, TxHang

MS = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * MS

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: float) -> int:
        self.now += int(ms * MS)
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def start(self, active: ActiveFault) -> None:
        self.calls.append(("start", active.id))

    def stop(self, active: ActiveFault) -> None:
        self.calls.append(("stop", active.id))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def engine_for(clock: Clock, seed: int = 0) -> FaultEngine:
    engine = FaultEngine(seed, clock=clock)
    engine.add_scope("disk", "disk0")
    engine.add_scope("net", "nic0")
    return engine


def decisions(engine: FaultEngine, fault_id: str, n: int) -> list[bool]:
    active = engine.get(fault_id)
    assert active is not None
    return [engine.decide(active) for _ in range(n)]


def test_ids_are_given_and_kept(clock: Clock) -> None:
    engine = engine_for(clock)
    first = engine.add(FrameDrop())
    named = engine.add(FrameDrop(id="mine"))
    assert first == "net.drop#1" and named == "mine"
    with pytest.raises(UsageError, match="already in effect"):
        engine.add(FrameDrop(id="mine"))
    assert [d["id"] for d in engine.listing()] == [first, "mine"]
    assert engine.remove("mine") == FrameDrop(id="mine")
    with pytest.raises(UsageError, match="no fault named 'mine'"):
        engine.remove("mine")


def test_skip_count_and_window(clock: Clock) -> None:
    engine = engine_for(clock)
    fid = engine.add(FrameDrop(skip=2, count=3, after_ms=10, for_ms=100))
    assert decisions(engine, fid, 3) == [False] * 3  # window not open: not even counted
    clock.advance(10)
    assert decisions(engine, fid, 7) == [False, False, True, True, True, False, False]
    active = engine.get(fid)
    assert active is not None and (active.seen, active.fired) == (7, 3)
    clock.advance(100)
    fid2 = engine.add(FrameDrop(after_ms=0, for_ms=100))
    clock.advance(100)
    assert decisions(engine, fid2, 1) == [False]  # its window closed


def test_rate_is_reproducible_by_seed_and_independent_of_other_faults(clock: Clock) -> None:
    runs = []
    for extra in (False, True, False):
        engine = engine_for(clock, seed=11)
        if extra:
            engine.add(FrameDrop(id="other", rate=0.5))
        engine.add(FrameDrop(id="drops", rate=0.3))
        runs.append(decisions(engine, "drops", 400))
    assert runs[0] == runs[1] == runs[2]
    assert 60 < sum(runs[0]) < 180
    other_seed = engine_for(clock, seed=12)
    other_seed.add(FrameDrop(id="drops", rate=0.3))
    assert decisions(other_seed, "drops", 400) != runs[0]


def test_state_faults_start_and_stop_at_their_edges(clock: Clock) -> None:
    engine = engine_for(clock)
    link = Recorder()
    engine.add_actuator("net.link-down", link)
    fid = engine.add(LinkDown(after_ms=50, for_ms=200))
    assert link.calls == []
    assert engine.next_deadline() == clock.now + 50 * MS
    engine.tick(clock.advance(49))
    assert link.calls == []
    engine.tick(clock.advance(1))
    assert link.calls == [("start", fid)]
    assert engine.next_deadline() == clock.now + 200 * MS
    engine.tick(clock.advance(200))
    assert link.calls == [("start", fid), ("stop", fid)]
    assert engine.next_deadline() is None


def test_unarmed_faults_wait_for_arm(clock: Clock) -> None:
    engine = engine_for(clock)
    link = Recorder()
    engine.add_actuator("net.link-down", link)
    fid = engine.add(LinkDown(armed=False, for_ms=100))
    engine.tick(clock.advance(1000))
    assert link.calls == [] and engine.next_deadline() is None
    engine.arm(fid)
    assert link.calls == [("start", fid)]
    engine.tick(clock.advance(100))
    assert link.calls[-1] == ("stop", fid)
    engine.arm(fid)  # again: another flap
    assert link.calls[-1] == ("start", fid)


def test_remove_and_end_stop_a_state_fault(clock: Clock) -> None:
    engine = engine_for(clock)
    hang = Recorder()
    engine.add_actuator("net.tx-hang", hang)
    fid = engine.add(TxHang())
    engine.remove(fid)
    assert hang.calls == [("start", fid), ("stop", fid)]
    fid = engine.add(TxHang(id="h2"))
    engine.end(fid)
    assert hang.calls[-1] == ("stop", "h2")
    active = engine.get("h2")
    assert active is not None and active.ended and not active.on
    engine.tick(clock.advance(1))
    assert hang.calls[-1] == ("stop", "h2")  # not started again


def test_faults_the_device_cannot_apply_are_refused(clock: Clock) -> None:
    engine = engine_for(clock)
    with pytest.raises(UsageError, match="cannot apply net.link-down.*supports: disk.media-error"):
        engine.add(LinkDown())
    with pytest.raises(UsageError, match="to 'disk7' .*disk0"):
        engine.add(MediaError(target="disk7"))
    with pytest.raises(UsageError, match="pci.lost-irq"):
        engine.add(FaultPlan.from_dict({"faults": [{"kind": "pci.lost-irq"}]}).faults[0])
    # a plan is all or nothing
    plan = FaultPlan.from_dict({"faults": [{"kind": "net.drop"}, {"kind": "net.link-down"}]})
    with pytest.raises(UsageError):
        engine.load(plan)
    assert len(engine) == 0


def test_timers_run_from_tick_in_order(clock: Clock) -> None:
    engine = engine_for(clock)
    ran: list[str] = []
    engine.call_at(clock.now + 20 * MS, lambda: ran.append("b"))
    engine.call_at(clock.now + 10 * MS, lambda: ran.append("a"))
    assert engine.next_deadline() == clock.now + 10 * MS
    engine.tick(clock.advance(15))
    assert ran == ["a"]
    engine.tick(clock.advance(15))
    assert ran == ["a", "b"] and engine.next_deadline() is None


def test_listeners_hear_every_change(clock: Clock) -> None:
    engine = engine_for(clock)
    heard: list[int] = []
    engine.on_change(lambda: heard.append(len(engine)))
    fid = engine.add(FrameDrop(for_ms=10))
    engine.tick(clock.advance(5))  # no edge: not told
    engine.tick(clock.advance(5))  # the window closed
    engine.remove(fid)
    assert heard == [1, 1, 0]
