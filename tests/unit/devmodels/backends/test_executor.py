from __future__ import annotations

import threading

import pytest

from devmodels import GuestMemory, UsageError
from devmodels.backends import BlockCompletion, BlockOp, BlockRequest, BlockStatus
from devmodels.backends.block import BlockExecutor

MEMORY = GuestMemory()
WAIT = 30  # seconds; only a hang guard, never asserted on


def ok(request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
    return BlockCompletion(request.tag, BlockStatus.OK, request.length)


def wait_until(predicate) -> None:
    done = threading.Event()
    for _ in range(WAIT * 1000):
        if predicate():
            return
        done.wait(0.001)
    raise AssertionError("condition never became true")


def test_every_completion_arrives_exactly_once():
    executor = BlockExecutor(ok, workers=3, queue_depth=4)
    try:
        for tag in range(500):
            executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=tag), MEMORY)
        executor.drain()
        tags = [c.tag for c in executor.completions()]
        assert sorted(tags) == list(range(500))
        assert executor.completions() == []
        assert executor.in_flight == 0
    finally:
        executor.close()


def test_flush_waits_for_earlier_requests():
    gate = threading.Event()
    finished: list[object] = []
    seen_by_flush: list[list[object]] = []
    lock = threading.Lock()

    def run(request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        if request.op is BlockOp.FLUSH:
            with lock:
                seen_by_flush.append(list(finished))
        else:
            assert gate.wait(WAIT)
            with lock:
                finished.append(request.tag)
        return ok(request, memory)

    executor = BlockExecutor(run, workers=3, queue_depth=8)
    try:
        executor.submit(BlockRequest(BlockOp.WRITE, 0, 0, tag="w1"), MEMORY)
        executor.submit(BlockRequest(BlockOp.WRITE, 0, 0, tag="w2"), MEMORY)
        executor.submit(BlockRequest(BlockOp.FLUSH, 0, 0, tag="f"), MEMORY)
        # All three are with workers; without the barrier the flush would run right now.
        wait_until(lambda: not executor._queue)
        gate.set()
        executor.drain()
        assert len(seen_by_flush) == 1 and sorted(seen_by_flush[0]) == ["w1", "w2"]
        order = [c.tag for c in executor.completions()]
        assert order[-1] == "f"
    finally:
        executor.close()


def test_queue_depth_bounds_in_flight():
    gate = threading.Event()
    peak = 0
    lock = threading.Lock()

    def run(request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        nonlocal peak
        with lock:
            peak = max(peak, executor.in_flight)
        assert gate.wait(WAIT)
        return ok(request, memory)

    executor = BlockExecutor(run, workers=2, queue_depth=3)
    submitted = []

    def producer() -> None:
        for tag in range(10):
            executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=tag), MEMORY)
            submitted.append(tag)

    thread = threading.Thread(target=producer)
    thread.start()
    wait_until(lambda: len(submitted) == 3)
    assert executor.in_flight == 3  # the producer now waits for a slot
    gate.set()
    thread.join()
    executor.drain()
    assert peak <= 3
    assert sorted(c.tag for c in executor.completions()) == list(range(10))
    executor.close()


def test_runner_exception_becomes_io_error_and_worker_survives():
    def run(request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        if request.tag == "boom":
            raise RuntimeError("bug")
        return ok(request, memory)

    executor = BlockExecutor(run, workers=1, queue_depth=4)
    executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag="boom"), MEMORY)
    executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag="fine"), MEMORY)
    executor.drain()
    by_tag = {c.tag: c for c in executor.completions()}
    assert by_tag["boom"].status is BlockStatus.IO_ERROR and "bug" in by_tag["boom"].error
    assert by_tag["fine"].status is BlockStatus.OK
    executor.close()


def test_notify_runs_when_ready_list_becomes_non_empty():
    calls = []
    executor = BlockExecutor(ok, workers=1, queue_depth=4)
    executor.set_notify(lambda: calls.append(threading.current_thread().name))
    executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=1), MEMORY)
    executor.drain()
    assert calls and calls[0].startswith("devmodels-blk")
    executor.completions()
    executor.complete_now(BlockCompletion("now", BlockStatus.IO_ERROR))
    assert calls[-1] == threading.current_thread().name
    executor.close()


def test_notify_hook_failure_is_contained():
    def bad_hook() -> None:
        raise RuntimeError("hook")

    executor = BlockExecutor(ok, workers=1, queue_depth=4)
    executor.set_notify(bad_hook)
    executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=1), MEMORY)
    executor.drain()
    executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=2), MEMORY)
    executor.drain()
    assert sorted(c.tag for c in executor.completions()) == [1, 2]
    executor.close()


def test_drain_from_notify_is_refused():
    errors: list[BaseException] = []
    executor = BlockExecutor(ok, workers=1, queue_depth=4)

    def hook() -> None:
        try:
            executor.drain()
        except UsageError as exc:
            errors.append(exc)

    executor.set_notify(hook)
    executor.submit(BlockRequest(BlockOp.READ, 0, 0), MEMORY)
    executor.drain()
    assert len(errors) == 1
    executor.close()


def test_close_waits_for_in_flight_then_refuses():
    gate = threading.Event()

    def run(request: BlockRequest, memory: GuestMemory) -> BlockCompletion:
        assert gate.wait(WAIT)
        return ok(request, memory)

    executor = BlockExecutor(run, workers=2, queue_depth=16)
    for tag in range(8):
        executor.submit(BlockRequest(BlockOp.READ, 0, 0, tag=tag), MEMORY)
    closer = threading.Thread(target=executor.close)
    closer.start()
    gate.set()
    closer.join()
    assert sorted(c.tag for c in executor.completions()) == list(range(8))
    with pytest.raises(UsageError):
        executor.submit(BlockRequest(BlockOp.READ, 0, 0), MEMORY)
    executor.close()  # idempotent


@pytest.mark.parametrize("kwargs", [{"workers": 0, "queue_depth": 1}, {"workers": 1, "queue_depth": 0}])
def test_bad_configuration(kwargs):
    with pytest.raises(UsageError):
        BlockExecutor(ok, **kwargs)
