from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devmodels import HostError, UsageError
from devmodels.backends import NetOffloads
from devmodels.backends.net import TapBackend
from devmodels.backends.net import _tap
from tests.prerequisites import prerequisite

needs_tap = prerequisite(None if os.geteuid() == 0 and os.path.exists(_tap.TUN_PATH) else "TAP needs root and /dev/net/tun")


@pytest.mark.parametrize("name", ["x" * 16, "bad/name", "sp ace", "tap\u00e9", 5])
def test_bad_names(name):
    with pytest.raises(UsageError):
        TapBackend(name)  # type: ignore[arg-type]


def test_missing_tun_device_is_host_error(monkeypatch):
    monkeypatch.setattr(_tap, "TUN_PATH", "/nonexistent/tun")
    with pytest.raises(HostError, match="does not exist"):
        TapBackend("dmtest0")


def test_offload_flags():
    assert _tap._flags_of(NetOffloads()) == 0
    assert _tap._flags_of(NetOffloads(tso4=True)) == 0  # TSO without checksum is refused
    full = NetOffloads(csum=True, tso4=True, tso6=True, ecn=True)
    assert _tap._flags_of(full) == _tap.TUN_F_CSUM | _tap.TUN_F_TSO4 | _tap.TUN_F_TSO6 | _tap.TUN_F_TSO_ECN


@needs_tap
def test_create_plain_tap():
    with TapBackend("dmtap%d") as tap:
        assert tap.name.startswith("dmtap")
        assert os.path.exists(f"/sys/class/net/{tap.name}")
        assert not tap.offloads.any
        assert tap.receive() == []  # down: nothing to read, no exception
        with pytest.raises(UsageError):
            tap.set_vnet_hdr(True)
        with pytest.raises(UsageError):
            tap.set_offloads(NetOffloads(csum=True))
        name = tap.name
    assert not os.path.exists(f"/sys/class/net/{name}")  # gone with the fd
    with pytest.raises(UsageError):
        tap.send(b"x")


@needs_tap
def test_vnet_header_tap():
    with TapBackend("dmvnet%d", vnet_hdr=True) as tap:
        assert tap.offloads.csum and tap.offloads.tso4 and not tap.offloads.ufo
        tap.set_vnet_hdr(True)
        tap.set_offloads(NetOffloads(csum=True, tso4=True))
        tap.set_vnet_hdr(False)
        with pytest.raises(UsageError):
            tap.set_offloads(NetOffloads(csum=True, ufo=True))
        assert tap.fileno() is not None


@needs_tap
@prerequisite(None if shutil.which("setpriv") else "setpriv (util-linux) not installed")
def test_without_cap_net_admin_is_a_clear_host_error():
    code = (
        "from devmodels import HostError\n"
        "from devmodels.backends.net import TapBackend\n"
        "try:\n"
        "    TapBackend('dmnocap0')\n"
        "except HostError as exc:\n"
        "    print('HostError:', exc)\n"
    )
    result = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[4],
    )
    assert result.returncode == 0, result.stderr
    assert "HostError:" in result.stdout and "CAP_NET_ADMIN" in result.stdout
