"""kvm._kick: the loop a kicker can wait on (rule 1) and the kick handler (rule 2)."""

from __future__ import annotations

import os
import select
import signal
import threading

import pytest

from devmodels import UsageError
from kvm._kick import KICK_SIGNAL, VmmLoop, install_kick_handler


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def test_rule_1_the_loop_descriptor_is_readable_while_a_watched_descriptor_is() -> None:
    loop = VmmLoop()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    seen: list[int] = []
    try:
        loop.add_reader(fd, lambda: seen.append(os.eventfd_read(fd)))
        assert not _readable(loop.fileno())
        os.eventfd_write(fd, 3)
        assert _readable(loop.fileno())
        loop.run_once(0)
        assert seen == [3]
        assert not _readable(loop.fileno())
    finally:
        loop.close()
        os.close(fd)


def test_rule_1_next_deadline_skips_cancelled_timers() -> None:
    loop = VmmLoop()
    try:
        assert loop.next_deadline_ns() is None
        early = loop.call_at(100, lambda: None)
        loop.call_at(200, lambda: None)
        assert loop.next_deadline_ns() == 100
        early.cancel()
        assert loop.next_deadline_ns() == 200
    finally:
        loop.close()


def test_rule_2_the_kick_signal_has_a_handler_that_does_nothing() -> None:
    install_kick_handler()
    handler = signal.getsignal(KICK_SIGNAL)
    assert callable(handler)
    signal.pthread_kill(threading.get_ident(), KICK_SIGNAL)  # must neither kill nor raise


def test_rule_2_a_first_install_off_the_main_thread_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import kvm._kick as kick

    monkeypatch.setattr(kick, "_installed", False)
    errors: list[BaseException] = []

    def off_main() -> None:
        try:
            install_kick_handler()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], UsageError)
    assert "main thread" in str(errors[0])
