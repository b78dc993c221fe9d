"""Guest payloads from ELF files (pyelftools): segments, entry point, symbols, checked loading.

Rules:

1. An ELF file is untrusted input. Parsing checks every header field it uses against the
   file and against stated bounds (``MAX_FILE``, ``MAX_SEGMENTS``, ``MAX_SYMBOLS``)
   before it reads what the field points at. Anything malformed, truncated or
   unsupported is an ``ElfError`` (a ``UsageError``: the host handed the loader a bad
   file) that names what was wrong; no other exception leaves ``ElfImage.parse``.
   pyelftools raises an open set of exception types on hostile input (ELFError,
   construct's stream errors, struct and index errors), so its calls are wrapped, and
   only its calls.
2. Supported: ELF64, little-endian, x86-64, ``ET_EXEC``. Each ``PT_LOAD`` segment is
   placed at its *physical* address (``p_paddr``): ``p_filesz`` bytes from the file, then
   zeros up to ``p_memsz`` (the ELF gABI "Program Loading"). Loaded segments must not
   overlap each other, and the entry point must lie in an executable one.
3. ``check`` and ``load`` place an image in guest RAM: every segment must fit RAM that
   exists and must not overlap any reserved window (the VMM's boot structures, the device
   windows of the machine's buses). ``load`` checks everything before it writes anything.
4. Symbols come from ``.symtab`` (functions and objects with an address): ``symbol(name)``
   finds a results area, ``name_of(address)`` names where a payload stopped.
"""

from __future__ import annotations

import io
import struct
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devmodels import Access, GuestMemory, UsageError

__all__ = ["ElfError", "ElfImage", "Segment", "Symbol", "Note", "Window", "MAX_FILE", "MAX_SEGMENTS", "MAX_SYMBOLS",
           "MAX_NOTES"]

MAX_FILE = 256 << 20
MAX_SEGMENTS = 64
MAX_SYMBOLS = 1 << 16
_MAX_NAME = 256

MAX_NOTES = 256
_PF_X = 1
_PHDR_SIZE, _SHDR_SIZE, _SYM_SIZE = 56, 64, 24  # Elf64_Phdr, Elf64_Shdr, Elf64_Sym
_SYMBOL_KINDS = ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE")


class ElfError(UsageError):
    """A bad ELF file, or one that does not fit where it must go (rule 1)."""


@dataclass(frozen=True)
class Segment:
    """A ``PT_LOAD`` segment (rule 2)."""

    paddr: int
    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int

    @property
    def end(self) -> int:
        """One past its last physical byte."""
        return self.paddr + self.memsz

    @property
    def executable(self) -> bool:
        """``PF_X`` is set."""
        return bool(self.flags & _PF_X)


@dataclass(frozen=True)
class Symbol:
    """A ``.symtab`` entry with an address (rule 4)."""

    name: str
    address: int
    size: int
    kind: str  # "STT_FUNC", "STT_OBJECT", "STT_NOTYPE"


@dataclass(frozen=True)
class Note:
    """An ELF note from a ``PT_NOTE`` segment: owner name, raw type, descriptor bytes."""

    name: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class Window:
    """A reserved guest-physical range that no segment may overlap (rule 3)."""

    base: int
    length: int
    what: str

    def overlaps(self, base: int, length: int) -> bool:
        """Whether ``[base, base+length)`` meets this window."""
        return base < self.base + self.length and self.base < base + length


class ElfImage:
    """A parsed ELF payload (rules 1-4); build one with ``parse`` or ``from_file``."""

    def __init__(self, data: bytes, entry: int, segments: tuple[Segment, ...], symbols: dict[str, Symbol],
                 notes: tuple[Note, ...], name: str) -> None:
        self.data = data
        self.entry = entry
        self.segments = segments
        self.symbols = symbols
        self.notes = notes
        self.name = name
        named = sorted((s.address, s.size, s.name) for s in symbols.values() if s.kind == "STT_FUNC")
        self._by_address = named
        self._addresses = [a for a, _, _ in named]

    # -- parsing (rules 1-2) -----------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path) -> ElfImage:
        """Parse the ELF file at ``path``.

        Raises:
            ElfError: it cannot be read or is not a loadable payload.
        """
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > MAX_FILE:
                raise ElfError(f"{path}: {size} bytes is larger than {MAX_FILE} (MAX_FILE)")
            data = path.read_bytes()
        except OSError as exc:
            raise ElfError(f"{path}: cannot read: {exc.strerror}") from None
        return cls.parse(data, name=str(path))

    @classmethod
    def parse(cls, data: bytes, *, name: str = "<bytes>") -> ElfImage:
        """Parse ``data`` (rule 1: only ``ElfError`` leaves here).

        Raises:
            ElfError: malformed, truncated, unsupported, or beyond the bounds.
        """
        if len(data) > MAX_FILE:
            raise ElfError(f"{name}: {len(data)} bytes is larger than {MAX_FILE} (MAX_FILE)")
        data = bytes(data)
        elffile = _elffile(data, name)
        header = _ident(elffile, name)
        segments = _segments(data, elffile, header, name)
        entry = header["e_entry"]
        if not any(s.executable and s.paddr <= entry < s.paddr + s.filesz for s in segments):
            raise ElfError(f"{name}: entry point {entry:#x} is not inside an executable PT_LOAD segment")
        symbols = _symbols(data, elffile, header, name)
        notes = _notes(data, elffile, header["e_phnum"], name)
        return cls(data, entry, segments, symbols, notes, name)

    # -- symbols (rule 4) ----------------------------------------------------------------------

    def symbol(self, name: str) -> Symbol:
        """The symbol ``name``.

        Raises:
            ElfError: the image has no such symbol.
        """
        found = self.symbols.get(name)
        if found is None:
            raise ElfError(f"{self.name}: no symbol {name!r}")
        return found

    def name_of(self, address: int) -> str:
        """``function+0xoff`` for an address inside a known function, else the hex address."""
        i = bisect_right(self._addresses, address) - 1
        if i >= 0:
            start, size, fname = self._by_address[i]
            if address < start + max(size, 1):
                return f"{fname}+{address - start:#x}"
        return f"{address:#x}"

    # -- placing (rule 3) ----------------------------------------------------------------------

    def check(self, memory: GuestMemory, reserved: Iterable[Window] = ()) -> None:
        """Check that every segment fits RAM and misses every reserved window.

        Raises:
            ElfError: naming the segment and what it does not fit or overlaps.
        """
        reserved = tuple(reserved)
        for seg in self.segments:
            if not seg.memsz:
                continue
            if not memory.check_range(seg.paddr, seg.memsz, Access.WRITE):
                raise ElfError(f"{self.name}: segment [{seg.paddr:#x}, +{seg.memsz:#x}) is not inside guest RAM")
            for window in reserved:
                if window.overlaps(seg.paddr, seg.memsz):
                    raise ElfError(
                        f"{self.name}: segment [{seg.paddr:#x}, +{seg.memsz:#x}) overlaps {window.what} "
                        f"[{window.base:#x}, +{window.length:#x})"
                    )

    def load(self, memory: GuestMemory, reserved: Iterable[Window] = ()) -> None:
        """``check``, then copy every segment into guest RAM (zero-filling past ``p_filesz``)."""
        self.check(memory, reserved)
        for seg in self.segments:
            if not seg.memsz:
                continue  # occupies nothing; check() does not place it either
            memory.write(seg.paddr, self.data[seg.offset : seg.offset + seg.filesz])
            if seg.memsz > seg.filesz:
                memory.fill(seg.paddr + seg.filesz, seg.memsz - seg.filesz)

    def __repr__(self) -> str:
        return f"<ElfImage {self.name} entry={self.entry:#x} {len(self.segments)} segments {len(self.symbols)} symbols>"


# -- the parsing steps -------------------------------------------------------------------------

def _elffile(data: bytes, name: str) -> Any:
    from elftools.elf.elffile import ELFFile

    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ElfError(f"{name}: not an ELF file (no ELF magic, or shorter than an ELF64 header)")
    try:
        elffile = ELFFile(io.BytesIO(data))
    except Exception as exc:  # rule 1: pyelftools' open set of errors on hostile input
        raise ElfError(f"{name}: not a readable ELF file: {exc}") from None
    if elffile.elfclass != 64 or not elffile.little_endian:
        raise ElfError(f"{name}: only ELF64 little-endian payloads are supported")
    return elffile


def _ident(elffile: Any, name: str) -> Any:
    header = elffile.header
    if header["e_type"] != "ET_EXEC":
        raise ElfError(f"{name}: e_type {header['e_type']} is not ET_EXEC (a static executable)")
    if header["e_machine"] != "EM_X86_64":
        raise ElfError(f"{name}: e_machine {header['e_machine']} is not EM_X86_64")
    return header


def _table_in_file(data: bytes, name: str, what: str, offset: int, count: int, entsize: int, want: int) -> None:
    if entsize != want:
        raise ElfError(f"{name}: {what} entry size {entsize} is not {want}")
    if offset + count * entsize > len(data):
        raise ElfError(f"{name}: {what} at {offset:#x} ({count} entries) run past the end of the file "
                       f"({len(data):#x} bytes)")


def _segments(data: bytes, elffile: Any, header: Any, name: str) -> tuple[Segment, ...]:
    phnum = header["e_phnum"]
    if phnum == 0:
        raise ElfError(f"{name}: no program headers")
    if phnum > MAX_SEGMENTS:  # also refuses PN_XNUM (0xffff) extended numbering
        raise ElfError(f"{name}: {phnum} program headers (at most {MAX_SEGMENTS})")
    _table_in_file(data, name, "program headers", header["e_phoff"], phnum, header["e_phentsize"], _PHDR_SIZE)
    segments: list[Segment] = []
    for i in range(phnum):
        try:
            ph = elffile.get_segment(i).header
        except Exception as exc:  # rule 1
            raise ElfError(f"{name}: unreadable program header {i}: {exc}") from None
        if ph["p_type"] != "PT_LOAD":
            continue
        where = f"{name}: PT_LOAD segment {i}"
        offset, filesz, memsz, paddr = ph["p_offset"], ph["p_filesz"], ph["p_memsz"], ph["p_paddr"]
        if filesz > memsz:
            raise ElfError(f"{where}: p_filesz {filesz:#x} exceeds p_memsz {memsz:#x}")
        if offset + filesz > len(data):
            raise ElfError(f"{where}: file bytes [{offset:#x}, +{filesz:#x}) run past the end of the file")
        if paddr + memsz > 1 << 64:
            raise ElfError(f"{where}: [{paddr:#x}, +{memsz:#x}) overflows the 64-bit address space")
        segments.append(Segment(paddr, ph["p_vaddr"], offset, filesz, memsz, ph["p_flags"]))
    if not segments:
        raise ElfError(f"{name}: no PT_LOAD segment")
    ordered = sorted((s for s in segments if s.memsz), key=lambda s: s.paddr)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.paddr < a.end:
            raise ElfError(f"{name}: PT_LOAD segments at {a.paddr:#x} and {b.paddr:#x} overlap")
    return tuple(segments)


def _section_header(elffile: Any, offset: int, index: int, name: str) -> Any:
    from elftools.common.utils import struct_parse

    try:
        return struct_parse(elffile.structs.Elf_Shdr, elffile.stream, stream_pos=offset)
    except Exception as exc:  # rule 1
        raise ElfError(f"{name}: unreadable section header {index}: {exc}") from None


def _section(elffile: Any, index: int, name: str) -> Any:
    try:
        return elffile.get_section(index)
    except Exception as exc:  # rule 1
        raise ElfError(f"{name}: unreadable section header {index}: {exc}") from None


def _symbols(data: bytes, elffile: Any, header: Any, name: str) -> dict[str, Symbol]:
    shnum = header["e_shnum"]
    if shnum == 0 or header["e_shoff"] == 0:
        return {}  # stripped (or extended section numbering, which payloads never need)
    _table_in_file(data, name, "section headers", header["e_shoff"], shnum, header["e_shentsize"], _SHDR_SIZE)
    if not header["e_shstrndx"] < shnum:
        raise ElfError(f"{name}: e_shstrndx {header['e_shstrndx']} is not one of the {shnum} sections")
    headers = [_section_header(elffile, header["e_shoff"] + i * _SHDR_SIZE, i, name) for i in range(shnum)]
    symtab = next((i for i, h in enumerate(headers) if h["sh_type"] == "SHT_SYMTAB"), None)
    if symtab is None:
        return {}
    sh = headers[symtab]
    _table_in_file(data, name, ".symtab", sh["sh_offset"], sh["sh_size"] // _SYM_SIZE if sh["sh_entsize"] else 0,
                   sh["sh_entsize"], _SYM_SIZE)
    if sh["sh_offset"] + sh["sh_size"] > len(data):
        raise ElfError(f"{name}: .symtab [{sh['sh_offset']:#x}, +{sh['sh_size']:#x}) runs past the end of the file")
    if sh["sh_size"] // _SYM_SIZE > MAX_SYMBOLS:
        raise ElfError(f"{name}: {sh['sh_size'] // _SYM_SIZE} symbols (at most {MAX_SYMBOLS})")
    link = sh["sh_link"]
    if not link < shnum or headers[link]["sh_type"] != "SHT_STRTAB":
        raise ElfError(f"{name}: .symtab's string table (section {link}) is not a string table")
    strtab = headers[link]
    if strtab["sh_offset"] + strtab["sh_size"] > len(data):
        raise ElfError(f"{name}: string table [{strtab['sh_offset']:#x}, +{strtab['sh_size']:#x}) runs past "
                       f"the end of the file")
    symbols: dict[str, Symbol] = {}
    try:
        for sym in _section(elffile, symtab, name).iter_symbols():
            kind = sym["st_info"]["type"]
            if kind not in _SYMBOL_KINDS or not sym.name or sym["st_shndx"] == "SHN_UNDEF":
                continue
            label = sym.name[:_MAX_NAME]
            symbols[label] = Symbol(label, sym["st_value"], sym["st_size"], kind)
    except Exception as exc:  # rule 1
        raise ElfError(f"{name}: unreadable symbol table: {exc}") from None
    return symbols


def _notes(data: bytes, elffile: Any, segments: int, name: str) -> tuple[Note, ...]:
    notes: list[Note] = []
    for i in range(segments):
        try:
            segment = elffile.get_segment(i)
            if segment["p_type"] != "PT_NOTE":
                continue
            if segment["p_offset"] + segment["p_filesz"] > len(data):
                raise ElfError(f"{name}: PT_NOTE segment {i} runs past the end of the file")
            for note in segment.iter_notes():
                if len(notes) >= MAX_NOTES:
                    raise ElfError(f"{name}: more than {MAX_NOTES} notes")
                # The raw n_type (gABI "Note Section": namesz, descsz, type): pyelftools names
                # the GNU types whatever the owner, and a Xen note's type must stay a number.
                (kind,) = struct.unpack_from("<I", data, note["n_offset"] + 8)
                notes.append(Note(str(note["n_name"]), kind, bytes(note["n_descdata"])))
        except ElfError:
            raise
        except Exception as exc:  # rule 1
            raise ElfError(f"{name}: unreadable notes in program header {i}: {exc}") from None
    return tuple(notes)
