"""Property: MSI-X masking and pending bits against a model (PCI 3.0 §6.8.2).

A vector is delivered exactly when MSI-X is enabled, the function is not masked and the
vector is unmasked; otherwise (while enabled) its pending bit is set, and it is delivered
once, when the mask holding it is cleared. Nothing is delivered twice. Messages are memory
writes: with Bus Master Enable clear, one that would be delivered is dropped instead.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from devmodels import RecordingMsiSink
from devmodels.pci import PciFunction, defs

VECTORS = 5
_SETTINGS = settings(max_examples=300, deadline=None)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("notify"), st.integers(-1, VECTORS)),
        st.tuples(st.just("mask"), st.integers(0, VECTORS - 1), st.booleans()),
        st.tuples(st.just("control"), st.booleans(), st.booleans()),
        st.tuples(st.just("data"), st.integers(0, VECTORS - 1), st.integers(0, 0xFFFF_FFFF)),
        st.tuples(st.just("ctrl8"), st.integers(0, VECTORS - 1), st.booleans()),
        st.tuples(st.just("bme"), st.booleans()),
    ),
    max_size=40,
)


@_SETTINGS
@given(ops)
def test_msix_delivery_matches_model(operations: list[tuple[Any, ...]]) -> None:
    f = PciFunction(0x1234, 1, 0)
    f.add_bar(0, 0x1000, None)
    msix = f.add_msix(VECTORS, bar=0)
    sink = RecordingMsiSink()
    f.msi_sink = sink
    f.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER)
    for v in range(VECTORS):
        f.bar_write(0, 16 * v, 4, 0xFEE0_0000 | v << 12)
        f.bar_write(0, 16 * v + 8, 4, v)

    enabled = function_masked = False
    bus_master = True
    masked = [True] * VECTORS
    data = list(range(VECTORS))
    pending = [False] * VECTORS
    expected: list[tuple[int, int]] = []
    notified = [0] * VECTORS

    def send(v: int) -> None:
        if bus_master:
            expected.append((0xFEE0_0000 | v << 12, data[v]))

    def flush(v: int) -> None:
        if pending[v] and enabled and not function_masked and not masked[v]:
            pending[v] = False
            send(v)

    for op in operations:
        if op[0] == "notify":
            v = op[1]
            handled = f.signal(v)
            assert handled == enabled
            if enabled and 0 <= v < VECTORS:
                notified[v] += 1
                if masked[v] or function_masked:
                    pending[v] = True
                else:
                    send(v)
        elif op[0] in ("mask", "ctrl8"):
            _, v, on = op
            if op[0] == "mask":
                f.bar_write(0, 16 * v + 12, 4, int(on))
            else:  # an 8-byte write of data + vector control
                f.bar_write(0, 16 * v + 8, 8, data[v] | int(on) << 32)
            masked[v] = on
            flush(v)
        elif op[0] == "control":
            _, enabled, function_masked = op
            value = (defs.PCI_MSIX_FLAGS_ENABLE if enabled else 0) | (defs.PCI_MSIX_FLAGS_MASKALL if function_masked else 0)
            f.config_write(msix.offset + defs.PCI_MSIX_FLAGS, 2, value)
            for v in range(VECTORS):
                flush(v)
        elif op[0] == "bme":
            bus_master = op[1]
            f.config_write(defs.PCI_COMMAND, 2, defs.PCI_COMMAND_MASTER if bus_master else 0)
        else:
            _, v, value = op
            f.bar_write(0, 16 * v + 8, 4, value)
            data[v] = value
        assert sink.messages == expected
        assert [msix.pending(v) for v in range(VECTORS)] == pending
        pba = f.bar_read(0, msix.pba_offset, 8)
        assert pba == sum(1 << v for v in range(VECTORS) if pending[v])
    for v in range(VECTORS):
        sent = sum(1 for address, _ in sink.messages if address == 0xFEE0_0000 | v << 12)
        assert sent <= notified[v]
