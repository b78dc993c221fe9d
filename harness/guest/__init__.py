"""Guest images for booting real Linux drivers against devmodels devices under QEMU.

``build_image()`` (or an ``ImageBuilder``) returns a ``GuestImage``: a Debian kernel and a
busybox initramfs whose ``/init`` loads the driver modules (e1000, AHCI, virtio, VFIO) with
``insmod``, runs one test script and powers off. Results come back on the serial console as
``DEVMODELS-CHECK <name> <PASS|FAIL> [detail]`` lines and a final ``DEVMODELS-DONE``
(``parse_checks`` reads them). Images are cached by content under ``default_cache_dir()``;
the cache keeps the 16 most recently used images (older ones go once unused for an hour;
``ImageBuilder(keep_images=...)``). ``build_module`` builds an out-of-tree kernel module of
ours (``kmod/``) against the guest kernel's Debian headers, cached by content, for a case to
add to its image. ``direct_kernel`` extracts the vmlinux inside the bzImage for a direct
(PVH) boot, which ``QemuLauncher.for_image`` uses.
"""

from ._binaries import ldd_closure
from ._cpio import FileTree, NewcWriter, read_newc
from ._image import (
    DEFAULT_MODULES,
    DEFAULT_OPTIONAL_MODULES,
    GuestImage,
    ImageBuilder,
    build_image,
    default_cache_dir,
)
from ._init import BUILTIN_TESTS
from ._kmod import TESTDEV_MODULE_SOURCE, BuiltModule, build_module
from ._modules import ModuleClosure, ModuleIndex
from ._progress import Progress
from ._protocol import CHECK_MARKER, DONE_MARKER, TEST_PARAM, CheckResult, parse_check_line, parse_checks
from ._vmlinux import DirectKernel, direct_kernel

__all__ = [
    "BUILTIN_TESTS",
    "BuiltModule",
    "CHECK_MARKER",
    "DEFAULT_MODULES",
    "DEFAULT_OPTIONAL_MODULES",
    "DONE_MARKER",
    "TEST_PARAM",
    "CheckResult",
    "DirectKernel",
    "FileTree",
    "GuestImage",
    "ImageBuilder",
    "ModuleClosure",
    "ModuleIndex",
    "NewcWriter",
    "Progress",
    "TESTDEV_MODULE_SOURCE",
    "build_image",
    "build_module",
    "default_cache_dir",
    "direct_kernel",
    "ldd_closure",
    "parse_check_line",
    "parse_checks",
    "read_newc",
]
