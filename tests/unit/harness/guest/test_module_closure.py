from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

import pytest

from devmodels import UsageError
from harness.guest._modules import (
    ModuleIndex,
    bzimage_version,
    find_version_dir,
    module_name,
    read_module,
    strip_compression,
)

# Shaped like `depmod -n` output: modules.dep lines (each listing the whole transitive
# closure, last-to-load first), then aliases, then softdeps.
FAKE_DEPMOD = """\
kernel/drivers/scsi/sd_mod.ko: kernel/block/t10-pi.ko kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/lib/crc-t10dif.ko kernel/crypto/crct10dif_common.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/block/t10-pi.ko: kernel/lib/crc-t10dif.ko kernel/crypto/crct10dif_common.ko
kernel/lib/crc-t10dif.ko: kernel/crypto/crct10dif_common.ko
kernel/crypto/crct10dif_common.ko:
kernel/crypto/crct10dif_generic.ko.xz: kernel/crypto/crct10dif_common.ko
kernel/arch/x86/crypto/crct10dif-pclmul.ko: kernel/crypto/crct10dif_common.ko
kernel/drivers/vfio/vfio.ko:
kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko
kernel/drivers/net/e1000.ko.zst:
kernel/drivers/a/loop-a.ko: kernel/drivers/a/loop-b.ko
kernel/drivers/a/loop-b.ko:
# Aliases extracted from modules themselves.
alias crct10dif crct10dif_generic
alias crct10dif crct10dif_pclmul
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias fs-thing loop_a
# Soft dependencies extracted from modules themselves.
softdep crc_t10dif pre: crct10dif
softdep vfio post: vfio_iommu_type1 vfio_iommu_spapr_tce
softdep loop_b pre: loop_a
softdep cifs gcm
# Aliases for symbols, used by symbol_request().
alias symbol:foo scsi_mod
"""

FAKE_BUILTIN = "kernel/net/packet/af_packet.ko\nkernel/drivers/ata/libata.ko\n"


@pytest.fixture
def index() -> ModuleIndex:
    return ModuleIndex.parse(FAKE_DEPMOD, FAKE_BUILTIN)


def test_dependencies_load_before_their_users(index: ModuleIndex) -> None:
    closure = index.closure(["sd_mod"])
    names = list(closure.names)
    assert names[-1] == "sd_mod"
    assert set(names) == {"sd_mod", "scsi_mod", "scsi_common", "t10_pi", "crc_t10dif", "crct10dif_common",
                          "crct10dif_generic", "crct10dif_pclmul"}
    for user, deps in [("sd_mod", ["scsi_mod", "t10_pi"]), ("scsi_mod", ["scsi_common"]),
                       ("t10_pi", ["crc_t10dif"]), ("crc_t10dif", ["crct10dif_common"])]:
        for dep in deps:
            assert names.index(dep) < names.index(user), (dep, user)


def test_pre_softdep_through_alias_loads_all_matches_first(index: ModuleIndex) -> None:
    names = list(index.closure(["crc_t10dif"]).names)
    assert names == ["crct10dif_common", "crct10dif_generic", "crct10dif_pclmul", "crc_t10dif"]


def test_post_softdep_loads_after_and_unknown_softdeps_are_skipped(index: ModuleIndex) -> None:
    assert index.closure(["vfio"]).names == ("vfio", "vfio_iommu_type1")


def test_each_file_appears_once_at_its_first_position(index: ModuleIndex) -> None:
    closure = index.closure(["sd_mod", "scsi_mod", "crc-t10dif", "vfio_iommu_type1", "vfio"])
    assert len(closure.files) == len(set(closure.files))
    assert closure.names.index("vfio") < closure.names.index("vfio_iommu_type1")


def test_files_keep_their_paths_and_compression(index: ModuleIndex) -> None:
    closure = index.closure(["e1000", "crct10dif_generic"])
    assert closure.files == ("kernel/drivers/net/e1000.ko.zst", "kernel/crypto/crct10dif_common.ko",
                             "kernel/crypto/crct10dif_generic.ko.xz")


def test_builtin_and_missing_optional_are_reported(index: ModuleIndex) -> None:
    closure = index.closure(["e1000", "af_packet"], optional=["sr_mod", "libata"])
    assert closure.names == ("e1000",)
    assert closure.builtin == ("af_packet", "libata")
    assert closure.missing_optional == ("sr_mod",)


def test_missing_required_module_is_a_usage_error(index: ModuleIndex) -> None:
    with pytest.raises(UsageError, match="nosuch"):
        index.closure(["nosuch"])


def test_softdep_cycle_terminates(index: ModuleIndex) -> None:
    # loop_a needs loop_b; loop_b wants loop_a first (softdep): each still appears once.
    names = index.closure(["loop_a"]).names
    assert sorted(names) == ["loop_a", "loop_b"]
    assert names.index("loop_b") < names.index("loop_a")


def test_aliases_resolve_exactly_and_by_pattern(index: ModuleIndex) -> None:
    assert index.resolve("fs-thing") == ["loop_a"]
    assert index.resolve("pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00") == ["e1000"]
    assert index.resolve("pci:v00008086d0000FFFFsv0sd0bc0sc0i0") == []
    assert index.resolve("af_packet") == []  # built in


def test_softdep_words_before_pre_or_post_are_ignored(index: ModuleIndex) -> None:
    assert "cifs" not in index.softdeps or index.softdeps["cifs"] == ((), ())


@pytest.mark.parametrize(("path", "name"), [
    ("kernel/lib/crc-t10dif.ko", "crc_t10dif"),
    ("kernel/x/vfio-pci.ko.xz", "vfio_pci"),
    ("a/b.ko.zst", "b"),
    ("a/b.ko.gz", "b"),
])
def test_module_name(path: str, name: str) -> None:
    assert module_name(path) == name


def test_strip_compression() -> None:
    assert strip_compression("a/b.ko.xz") == "a/b.ko"
    assert strip_compression("a/b.ko.zst") == "a/b.ko"
    assert strip_compression("a/b.ko") == "a/b.ko"


def test_read_module_decompresses(tmp_path: Path) -> None:
    payload = b"\x7fELF" + bytes(100)
    (tmp_path / "a.ko").write_bytes(payload)
    (tmp_path / "b.ko.xz").write_bytes(lzma.compress(payload))
    (tmp_path / "c.ko.gz").write_bytes(gzip.compress(payload))
    for name in ("a.ko", "b.ko.xz", "c.ko.gz"):
        assert read_module(tmp_path / name) == payload


def test_bzimage_version_reads_the_setup_header(tmp_path: Path) -> None:
    image = bytearray(0x1000)
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x20E, 0x400 - 0x200)
    text = b"6.1.0-99-amd64 (someone@example) #1 SMP\0"
    image[0x400:0x400 + len(text)] = text
    (tmp_path / "bz").write_bytes(bytes(image))
    assert bzimage_version(tmp_path / "bz") == "6.1.0-99-amd64"
    (tmp_path / "not").write_bytes(b"plain")
    assert bzimage_version(tmp_path / "not") is None


def test_find_version_dir_accepts_three_layouts(tmp_path: Path) -> None:
    vdir = tmp_path / "root" / "lib" / "modules" / "6.1.0-1-amd64"
    (vdir / "kernel").mkdir(parents=True)
    assert find_version_dir(tmp_path / "root", None) == vdir
    assert find_version_dir(tmp_path / "root" / "lib" / "modules", "6.1.0-1-amd64") == vdir
    assert find_version_dir(vdir, None) == vdir
    (vdir.parent / "6.1.0-2-amd64" / "kernel").mkdir(parents=True)
    with pytest.raises(UsageError, match="several"):
        find_version_dir(tmp_path / "root", None)
    assert find_version_dir(tmp_path / "root", "6.1.0-2-amd64").name == "6.1.0-2-amd64"
    with pytest.raises(UsageError):
        find_version_dir(tmp_path / "root", "7.0")
