"""The three error families (devmodels._errors)."""

from __future__ import annotations

import pytest

import devmodels
from devmodels import _errors
from devmodels._errors import (
    AddressOverflowError,
    DenialOfService,
    DevmodelsError,
    GuestError,
    GuestMemoryError,
    HostError,
    SnapshotError,
    UsageError,
)

FAMILIES = (GuestError, HostError, UsageError)
ALL = [getattr(_errors, name) for name in _errors.__all__]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_families_never_mix(cls: type) -> None:
    families = [f for f in FAMILIES if issubclass(cls, f)]
    assert len(families) <= 1, f"{cls.__name__} belongs to {families}"
    assert issubclass(cls, DevmodelsError)


@pytest.mark.parametrize(
    ("cls", "family"),
    [
        (GuestMemoryError, GuestError),
        (AddressOverflowError, GuestError),
        (DenialOfService, GuestError),
        (SnapshotError, UsageError),
    ],
)
def test_family_membership(cls: type, family: type) -> None:
    assert issubclass(cls, family)


def test_usage_error_is_value_error() -> None:
    assert issubclass(UsageError, ValueError)
    with pytest.raises(ValueError, match="bad thing"):
        raise UsageError("bad thing")


def test_guest_error_status_defaults_to_none_and_subclasses_set_it() -> None:
    assert GuestError("x").status is None

    class IoError(GuestError):
        status = 1

    assert IoError("y").status == 1
    assert GuestError.status is None


def test_guest_memory_error_fields_and_message() -> None:
    exc = GuestMemoryError(0x1000, 0x20)
    assert (exc.gpa, exc.length) == (0x1000, 0x20)
    assert exc.reason == "not backed by guest RAM"
    assert "gpa=0x1000" in str(exc) and "len=0x20" in str(exc)
    custom = GuestMemoryError(1, 2, "region is read-only")
    assert "read-only" in str(custom)


def test_address_overflow_error_fields() -> None:
    exc = AddressOverflowError((1 << 64) - 1, 2)
    assert isinstance(exc, GuestMemoryError)
    assert exc.gpa == (1 << 64) - 1 and exc.length == 2
    assert "overflows 2**64" in str(exc)


def test_snapshot_error_names_field() -> None:
    exc = SnapshotError("pci.config", "wrong")
    assert exc.field == "pci.config"
    assert "'pci.config'" in str(exc) and "wrong" in str(exc)


def test_package_reexports_every_error() -> None:
    for name in _errors.__all__:
        assert getattr(devmodels, name) is getattr(_errors, name)
