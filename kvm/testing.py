"""Test helpers that ship with the package (CONVENTIONS: simulators): a small ELF64 writer.

``make_elf`` builds the x86-64 executables the loader's tests and the ELF fuzz target's
seeds need without a toolchain: PT_LOAD segments at chosen physical addresses, PT_NOTE
notes, and a symbol table. Every field can be overridden (``header``) so tests can build
the malformed files the loader must refuse.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["ElfSegment", "make_elf", "PT_LOAD", "PT_NOTE", "PF_X", "PF_W", "PF_R", "XEN_ELFNOTE_PHYS32_ENTRY"]

PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # xen/include/public/elfnote.h
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_SHN_ABS = 0xFFF1


@dataclass
class ElfSegment:
    """One PT_LOAD segment: ``data`` at ``paddr`` (and ``vaddr``, default the same), zero-filled
    to ``memsz`` (default ``len(data)``)."""

    paddr: int
    data: bytes
    memsz: int | None = None
    flags: int = PF_R | PF_X
    vaddr: int | None = None
    extra: dict[str, int] = field(default_factory=dict)  # raw overrides: p_offset, p_filesz...


def _note(name: str, kind: int, desc: bytes) -> bytes:
    raw_name = name.encode() + b"\0"

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    return struct.pack("<III", len(raw_name), len(desc), kind) + pad(raw_name) + pad(desc)


def make_elf(
    segments: Sequence[ElfSegment],
    entry: int,
    *,
    symbols: Mapping[str, tuple[int, int, str]] | None = None,
    notes: Sequence[tuple[str, int, bytes]] = (),
    header: Mapping[str, int] | None = None,
) -> bytes:
    """An ELF64 x86-64 ``ET_EXEC`` image.

    Args:
        segments: the PT_LOAD segments, in order.
        entry: ``e_entry``.
        symbols: name -> (address, size, "func" | "object"), as ``SHN_ABS`` symbols.
        notes: (owner, type, descriptor) notes, all in one PT_NOTE segment.
        header: overrides of ELF header fields by name (``e_type``, ``e_machine``,
            ``e_phnum``, ``e_phentsize``, ``e_shoff``, ``e_ident``...).
    """
    header = dict(header or {})
    note_blob = b"".join(_note(*n) for n in notes)
    phnum = len(segments) + (1 if notes else 0)
    offset = _EHDR.size + phnum * _PHDR.size
    body = bytearray()
    phdrs = []
    for seg in segments:
        at = offset + len(body)
        at += -at % 16
        body += bytes(at - offset - len(body))
        body += seg.data
        fields = dict(p_type=PT_LOAD, p_flags=seg.flags, p_offset=at, p_vaddr=seg.paddr if seg.vaddr is None else seg.vaddr,
                      p_paddr=seg.paddr, p_filesz=len(seg.data),
                      p_memsz=len(seg.data) if seg.memsz is None else seg.memsz, p_align=16)
        fields.update(seg.extra)
        phdrs.append(fields)
    if notes:
        at = offset + len(body)
        at += -at % 4
        body += bytes(at - offset - len(body))
        body += note_blob
        phdrs.append(dict(p_type=PT_NOTE, p_flags=PF_R, p_offset=at, p_vaddr=0, p_paddr=0, p_filesz=len(note_blob),
                          p_memsz=len(note_blob), p_align=4))
    sections = b""
    shoff, shnum, shstrndx = 0, 0, 0
    if symbols:
        strtab = bytearray(b"\0")
        symtab = bytearray(_SYM.pack(0, 0, 0, 0, 0, 0))
        for name, (address, size, kind) in symbols.items():
            name_at = len(strtab)
            strtab += name.encode() + b"\0"
            info = 1 << 4 | (2 if kind == "func" else 1)  # STB_GLOBAL, STT_FUNC / STT_OBJECT
            symtab += _SYM.pack(name_at, info, 0, _SHN_ABS, address, size)
        shstrtab = b"\0.symtab\0.strtab\0.shstrtab\0"
        start = offset + len(body)
        start += -start % 8
        body += bytes(start - offset - len(body))
        sym_at = start
        str_at = sym_at + len(symtab)
        shs_at = str_at + len(strtab)
        body += symtab + strtab + shstrtab
        shoff = offset + len(body)
        shoff += -shoff % 8
        body += bytes(shoff - offset - len(body))
        sections = b"".join((
            _SHDR.pack(0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
            _SHDR.pack(1, 2, 0, 0, sym_at, len(symtab), 2, 1, 8, _SYM.size),
            _SHDR.pack(9, 3, 0, 0, str_at, len(strtab), 0, 0, 1, 0),
            _SHDR.pack(17, 3, 0, 0, shs_at, len(shstrtab), 0, 0, 1, 0),
        ))
        shnum, shstrndx = 4, 3
    ident = header.pop("e_ident", None)
    ident_bytes = (b"\x7fELF\x02\x01\x01" + bytes(9)) if ident is None else ident.to_bytes(16, "big")
    values = dict(e_type=2, e_machine=62, e_version=1, e_entry=entry, e_phoff=_EHDR.size if phnum else 0,
                  e_shoff=shoff, e_flags=0, e_ehsize=_EHDR.size, e_phentsize=_PHDR.size, e_phnum=phnum,
                  e_shentsize=_SHDR.size if shnum else 0, e_shnum=shnum, e_shstrndx=shstrndx)
    values.update(header)
    out = bytearray(_EHDR.pack(ident_bytes, *values.values()))
    for ph in phdrs:
        out += _PHDR.pack(*(ph[k] for k in ("p_type", "p_flags", "p_offset", "p_vaddr", "p_paddr", "p_filesz",
                                             "p_memsz", "p_align")))
    return bytes(out + body + sections)
