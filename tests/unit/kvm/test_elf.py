"""kvm._elf: parsing (rules 1-2), placing (rule 3) and symbols (rule 4) of ELF payloads."""

from __future__ import annotations

import struct

import pytest

from devmodels import GuestMemory, MemoryRegion, UsageError
from kvm import MAX_SEGMENTS, ElfError, ElfImage, Window
from kvm.payloads import build, compiler_missing
from kvm.testing import PF_R, PF_W, PF_X, XEN_ELFNOTE_PHYS32_ENTRY, ElfSegment, make_elf
from tests.prerequisites import prerequisite

CODE = b"\x90" * 32 + b"\xf4"
BASE = 0x100000


def payload(**header: int) -> bytes:
    return make_elf(
        [ElfSegment(BASE, CODE, flags=PF_R | PF_X), ElfSegment(BASE + 0x1000, b"data", memsz=0x100, flags=PF_R | PF_W)],
        BASE,
        symbols={"main": (BASE, 16, "func"), "helper": (BASE + 16, 17, "func"), "results": (BASE + 0x1000, 0x40, "object")},
        header=header,
    )


@pytest.fixture
def ram() -> GuestMemory:
    memory = GuestMemory([MemoryRegion.from_bytearray(0, 4 << 20)])
    memory.fill(0, 4 << 20, 0xAA)
    return memory


# -- rule 1-2: what parses ------------------------------------------------------------------


def test_a_payload_parses_with_segments_entry_and_symbols() -> None:
    image = ElfImage.parse(payload())
    assert image.entry == BASE
    assert [(s.paddr, s.filesz, s.memsz, s.executable) for s in image.segments] == [
        (BASE, len(CODE), len(CODE), True), (BASE + 0x1000, 4, 0x100, False)]
    assert image.symbol("results").address == BASE + 0x1000
    assert image.symbol("results").size == 0x40


def test_segments_load_at_their_physical_address_not_their_virtual_one(ram: GuestMemory) -> None:
    data = make_elf([ElfSegment(BASE, CODE, vaddr=0xFFFF_FFFF_8100_0000)], BASE)
    ElfImage.parse(data).load(ram)
    assert ram.read(BASE, len(CODE)) == CODE


def test_notes_keep_their_raw_type() -> None:
    entry = (0x1000000).to_bytes(4, "little")
    data = make_elf([ElfSegment(BASE, CODE)], BASE, notes=[("Xen", XEN_ELFNOTE_PHYS32_ENTRY, entry), ("GNU", 3, b"id")])
    notes = ElfImage.parse(data).notes
    assert [(n.name, n.type, n.desc) for n in notes] == [("Xen", 18, entry), ("GNU", 3, b"id")]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "not an ELF file"),
        (b"\x7fELF" + bytes(10), "not an ELF file"),
        (b"MZ" + bytes(200), "not an ELF file"),
        (payload(e_ident=int.from_bytes(b"\x7fELF\x01\x01\x01" + bytes(9), "big")), "ELF64 little-endian"),
        (payload(e_type=3), "ET_EXEC"),
        (payload(e_machine=3), "EM_X86_64"),
        (payload(e_phnum=0), "no program headers"),
        (payload(e_phnum=MAX_SEGMENTS + 1), "program headers"),
        (payload(e_phnum=0xFFFF), "program headers"),
        (payload(e_phentsize=32), "entry size 32"),
        (payload(e_phoff=1 << 40), "run past the end of the file"),
        (payload(e_entry=BASE + 0x1000), "entry point"),
        (payload(e_shentsize=40), "entry size 40"),
        (payload(e_shoff=1 << 40), "run past the end of the file"),
        (payload(e_shstrndx=77), "e_shstrndx 77"),
    ],
    ids=["empty", "short", "not-elf", "elf32", "et-dyn", "not-x86-64", "no-phdrs", "too-many-phdrs", "pn-xnum",
         "phentsize", "phoff-past-end", "entry-in-data", "shentsize", "shoff-past-end", "shstrndx"],
)
def test_rule_1_malformed_headers_are_elf_errors(data: bytes, words: str) -> None:
    with pytest.raises(ElfError, match=words):
        ElfImage.parse(data)


@pytest.mark.parametrize(
    ("segment", "words"),
    [
        (ElfSegment(BASE, CODE, memsz=4), "exceeds p_memsz"),
        (ElfSegment(BASE, CODE, extra={"p_offset": 1 << 30}), "past the end of the file"),
        (ElfSegment(BASE, CODE, extra={"p_filesz": 1 << 20, "p_memsz": 1 << 20}), "past the end of the file"),
        (ElfSegment((1 << 64) - 16, CODE), "overflows"),
    ],
)
def test_rule_2_malformed_segments_are_elf_errors(segment: ElfSegment, words: str) -> None:
    with pytest.raises(ElfError, match=words):
        ElfImage.parse(make_elf([ElfSegment(BASE, CODE), segment], BASE))


def test_rule_2_overlapping_segments_are_refused() -> None:
    data = make_elf([ElfSegment(BASE, CODE, memsz=0x100), ElfSegment(BASE + 0x80, b"x")], BASE)
    with pytest.raises(ElfError, match="overlap"):
        ElfImage.parse(data)


def test_rule_2_an_entry_in_a_data_segment_is_refused() -> None:
    data = make_elf([ElfSegment(BASE, CODE, flags=PF_R | PF_W)], BASE)
    with pytest.raises(ElfError, match="executable"):
        ElfImage.parse(data)


def test_rule_1_a_symbol_table_with_a_zero_entry_size_is_refused_not_divided_by() -> None:
    data = bytearray(payload())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<Q", data, shoff + 64 + 56, 0)  # section 1 (.symtab): sh_entsize
    with pytest.raises(ElfError, match=".symtab entry size 0"):
        ElfImage.parse(bytes(data))


def test_rule_1_a_symbol_table_whose_link_is_not_a_string_table_is_refused() -> None:
    data = bytearray(payload())
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    struct.pack_into("<I", data, shoff + 64 + 40, 0)  # .symtab sh_link -> the null section
    with pytest.raises(ElfError, match="string table"):
        ElfImage.parse(bytes(data))


def test_rule_1_every_truncation_of_a_payload_is_an_elf_error_or_parses() -> None:
    data = payload()
    for length in range(len(data)):
        try:
            ElfImage.parse(data[:length])
        except ElfError:
            pass


def test_rule_1_an_oversized_file_is_refused_before_parsing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import kvm._elf as elf

    monkeypatch.setattr(elf, "MAX_FILE", 100)
    with pytest.raises(ElfError, match="MAX_FILE"):
        ElfImage.parse(payload())
    path = tmp_path / "big.elf"
    path.write_bytes(payload())
    with pytest.raises(ElfError, match="MAX_FILE"):
        ElfImage.from_file(path)


def test_an_unreadable_path_is_an_elf_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ElfError, match="cannot read"):
        ElfImage.from_file(tmp_path / "missing.elf")


def test_elf_errors_are_usage_errors() -> None:
    assert issubclass(ElfError, UsageError)


# -- rule 3: placing --------------------------------------------------------------------------


def test_rule_3_load_copies_the_file_bytes_and_zero_fills_the_rest(ram: GuestMemory) -> None:
    ElfImage.parse(payload()).load(ram)
    assert ram.read(BASE, len(CODE)) == CODE
    assert ram.read(BASE + 0x1000, 0x100) == b"data" + bytes(0xFC)
    assert ram.read(BASE + 0x1100, 16) == b"\xaa" * 16  # past p_memsz: untouched


def test_rule_3_a_segment_outside_ram_is_refused_and_nothing_is_written(ram: GuestMemory) -> None:
    data = make_elf([ElfSegment(BASE, CODE), ElfSegment((4 << 20) - 8, b"x" * 16)], BASE)
    with pytest.raises(ElfError, match="not inside guest RAM"):
        ElfImage.parse(data).load(ram)
    assert ram.read(BASE, len(CODE)) == b"\xaa" * len(CODE)


def test_rule_3_a_segment_over_a_reserved_window_is_refused_naming_it(ram: GuestMemory) -> None:
    window = Window(BASE + 0x1080, 0x10, "device window testdev.bar0")
    with pytest.raises(ElfError, match="overlaps device window testdev.bar0"):
        ElfImage.parse(payload()).load(ram, [window])
    assert ram.read(BASE, 4) == b"\xaa" * 4


def test_rule_3_a_window_just_past_the_segment_is_fine(ram: GuestMemory) -> None:
    ElfImage.parse(payload()).load(ram, [Window(BASE + 0x1100, 0x1000, "next door")])


# -- rule 4: symbols ---------------------------------------------------------------------------


def test_rule_4_name_of_names_functions_and_falls_back_to_the_address() -> None:
    image = ElfImage.parse(payload())
    assert image.name_of(BASE + 3) == "main+0x3"
    assert image.name_of(BASE + 20) == "helper+0x4"
    assert image.name_of(BASE + 0x1000) == "0x101000"  # an object, not a function
    assert image.name_of(0x10) == "0x10"


def test_rule_4_a_missing_symbol_is_an_elf_error() -> None:
    with pytest.raises(ElfError, match="no symbol 'nope'"):
        ElfImage.parse(payload()).symbol("nope")


def test_a_stripped_file_has_no_symbols_but_loads(ram: GuestMemory) -> None:
    image = ElfImage.parse(make_elf([ElfSegment(BASE, CODE)], BASE))
    assert image.symbols == {}
    image.load(ram)
    assert image.name_of(BASE) == "0x100000"


@prerequisite(compiler_missing())
def test_a_built_payload_parses_with_its_results_area(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = ElfImage.from_file(build("testdev", tmp_path))
    assert image.entry == image.symbol("_start").address == 0x100000
    assert image.symbol("results").size == 16 + 64 * 8
    assert image.name_of(image.symbol("main").address + 1) == "main+0x1"


def test_regression_empty_segment_outside_ram_loads(ram: GuestMemory) -> None:
    """A PT_LOAD segment of zero bytes at an address that is no RAM passed ``check`` (which
    skips empty segments) but made ``load`` raise GuestMemoryError from a zero-length write
    (found by the elf fuzz target: fuzz/regressions/elf/empty-segment-outside-ram)."""
    data = make_elf([ElfSegment(BASE, CODE), ElfSegment(0x6261_7472_7473_6873, b"", memsz=0)], BASE)
    ElfImage.parse(data).load(ram)
    assert ram.read(BASE, len(CODE)) == CODE
