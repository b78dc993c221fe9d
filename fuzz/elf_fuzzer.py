#!/usr/bin/env python3
"""Fuzz target: the ELF payload loader of the KVM adapter (``kvm.ElfImage``).

Not an op-stream target: the input is an ELF file, as a hostile or truncated file on disk
would hand it to ``ElfImage.parse``. A file that parses is then checked against and loaded
into 2 MiB of guest RAM with two reserved windows (the boot structures and a device
window), and its symbols are looked up.

Oracles, besides ``Guard``'s (nothing but ``ElfError`` escapes ``parse``/``check``/``load``,
no hang, bounded heap):

- ``load``: a load that succeeds changes guest RAM only inside its PT_LOAD segments, each
  of which then holds the file's bytes followed by zeros; one that is refused changes
  nothing (``ElfImage`` rule 3: everything is checked before anything is written);
- ``symbols``: every symbol's name is found again by ``symbol``, and ``name_of`` answers
  for any address.

Coverage: run as a script with atheris, ``kvm`` and ``elftools`` are instrumented (the
parser's paths are what this target explores). OSS-Fuzz layout: ``TestOneInput`` plus the
atheris main under ``__main__``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fuzz._instrument import fuzz_main  # noqa: E402


def _instrumented(module_name: str) -> contextlib.AbstractContextManager[Any]:
    if module_name == "__main__" and importlib.util.find_spec("atheris") is not None:
        import atheris

        return atheris.instrument_imports(include=["kvm", "elftools"])
    return contextlib.nullcontext()


with _instrumented(__name__):
    import elftools.elf.elffile  # noqa: F401 - imported here so that atheris instruments it
    from devmodels import GuestMemory, MemoryRegion
    from fuzz._execute import Guard
    from fuzz._rig import Finding
    from kvm import ElfError, ElfImage, Window
    from kvm.testing import XEN_ELFNOTE_PHYS32_ENTRY, ElfSegment, make_elf

RAM_SIZE = 2 << 20
RESERVED = (Window(0x1000, 0xA000, "the boot structures"), Window(0x180000, 0x1000, "a device window"))
_PATTERN = bytes((i * 37 + 11) & 0xFF for i in range(256)) * (RAM_SIZE // 256)


def _ram() -> GuestMemory:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, RAM_SIZE)])
    memory.write(0, _PATTERN)
    return memory


def _check_load(image: ElfImage, memory: GuestMemory, loaded: bool) -> None:
    after = memory.read(0, RAM_SIZE)
    if not loaded:
        if after != _PATTERN:
            raise Finding("load", "a refused load changed guest RAM")
        return
    expected = bytearray(_PATTERN)
    for seg in image.segments:
        if seg.memsz:
            expected[seg.paddr : seg.paddr + seg.filesz] = image.data[seg.offset : seg.offset + seg.filesz]
            expected[seg.paddr + seg.filesz : seg.paddr + seg.memsz] = bytes(seg.memsz - seg.filesz)
    if after != bytes(expected):
        first = next(i for i in range(RAM_SIZE) if after[i] != expected[i])
        raise Finding("load", f"guest RAM differs from the segments at {first:#x}")


def _exercise(data: bytes) -> None:
    try:
        image = ElfImage.parse(data, name="input")
    except ElfError:
        return
    for name in image.symbols:
        if image.symbol(name).name != name:
            raise Finding("symbols", f"symbol {name!r} is not found by its name")
    for seg in image.segments:
        image.name_of(seg.paddr)
        image.name_of(seg.paddr + seg.memsz)
    image.name_of(image.entry)
    memory = _ram()
    try:
        image.load(memory, RESERVED)
        loaded = True
    except ElfError:
        loaded = False
    _check_load(image, memory, loaded)


def execute_input(
    data: bytes,
    *,
    op_seconds: float = 2.0,
    check_memory: bool = False,
    memory_limit: int = 64 << 20,
    trace: Callable[[str], None] | None = None,
) -> None:
    """Run one input with every oracle (module docstring); raise ``Finding``."""
    if trace is not None:
        trace(f"ELF input of {len(data)} bytes: {data[:64].hex()}")
    with Guard(op_seconds, check_memory, memory_limit) as guard:
        guard.mark_memory()
        guard.call(lambda: _exercise(data), "parse/check/load")
        guard.check_memory("the end of the input")


def seeds() -> dict[str, bytes]:
    """The committed corpus: payload-shaped images made by ``kvm.testing.make_elf`` (a
    code segment with its .bss, symbols, a PVH note as in a Linux vmlinux, a stripped file),
    and, where gcc is there, the real testdev payload without its debug sections."""
    made = _synthetic_seeds()
    made.update(_payload_seeds())
    return made


def _payload_seeds() -> dict[str, bytes]:
    import shutil
    import subprocess
    import tempfile

    from kvm.payloads import build, compiler_missing

    if compiler_missing() is not None or shutil.which("objcopy") is None:
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        elf = build("testdev", tmp)
        subprocess.run(["objcopy", "--strip-debug", str(elf)], check=True)
        return {"testdev-payload": elf.read_bytes()}


def _synthetic_seeds() -> dict[str, bytes]:
    code = bytes.fromhex("48 8d 25 f9 0f 00 00 e8 00 00 00 00 f4 eb fd".replace(" ", ""))
    symbols = {"_start": (0x100000, len(code), "func"), "main": (0x100007, 6, "func"),
               "results": (0x101000, 0x220, "object")}
    return {
        "payload": make_elf([ElfSegment(0x100000, code, flags=5), ElfSegment(0x101000, b"", memsz=0x2000, flags=6)],
                            0x100000, symbols=symbols),
        "pvh-note": make_elf([ElfSegment(0x100000, code, flags=5)], 0x100000,
                             notes=[("Xen", XEN_ELFNOTE_PHYS32_ENTRY, (0x100000).to_bytes(4, "little")),
                                    ("GNU", 3, bytes(20))]),
        "stripped": make_elf([ElfSegment(0x100000, code, flags=5)], 0x100000),
        "over-device-window": make_elf([ElfSegment(0x17F000, code, memsz=0x2000, flags=7)], 0x17F000),
    }


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name libFuzzer/atheris expect
    """One fuzz input."""
    execute_input(data)


if __name__ == "__main__":
    fuzz_main(TestOneInput)
