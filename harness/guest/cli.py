"""``devmodels guest-image``: build (or find in the cache) a guest kernel + initramfs.

Prints the kernel and initramfs paths, or a JSON object with ``--json``. With ``--boot`` it
also boots the image under QEMU (TCG) and prints the check results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from devmodels import DevmodelsError
from ._image import DEFAULT_MODULES, DEFAULT_OPTIONAL_MODULES, ImageBuilder

__all__ = ["main", "make_parser"]


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of ``devmodels guest-image``."""
    p = argparse.ArgumentParser(prog="devmodels guest-image", description=__doc__.splitlines()[0])
    src = p.add_argument_group("kernel (default: the Debian linux-image-amd64 package, via apt)")
    src.add_argument("--kernel", type=Path, help="bzImage to use instead of the Debian package")
    src.add_argument("--modules", type=Path, help="modules tree of --kernel (root, lib/modules or version dir)")
    src.add_argument("--kernel-version", help="kernel release, if the bzImage header does not tell")
    src.add_argument("--kernel-package", help="Debian package instead of what linux-image-amd64 depends on")
    content = p.add_argument_group("contents")
    content.add_argument("--module", action="append", default=[], metavar="NAME",
                         help="extra module to load (repeatable)")
    content.add_argument("--no-default-modules", action="store_true",
                         help=f"do not load the defaults ({', '.join(DEFAULT_MODULES + DEFAULT_OPTIONAL_MODULES)})")
    content.add_argument("--script", type=Path, help="shell script embedded as /test.sh (the default test)")
    content.add_argument("--test", action="append", default=[], metavar="NAME=FILE",
                         help="embed FILE as test NAME, run with devmodels.test=NAME (repeatable)")
    content.add_argument("--file", action="append", default=[], metavar="GUEST=HOST",
                         help="copy host file HOST to guest path GUEST (repeatable)")
    content.add_argument("--binary", action="append", default=[], type=Path, metavar="PATH",
                         help="add an ELF program with its shared libraries (repeatable)")
    p.add_argument("--cache-dir", type=Path, help="cache directory (default: $DEVMODELS_CACHE/guest "
                   "or ~/.cache/devmodels/guest)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="draw a progress bar on stderr (default: when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--boot", action="store_true", help="boot the image under QEMU and print the checks")
    p.add_argument("--run", metavar="NAME", help="with --boot: the test to run (default: /test.sh, else smoke)")
    p.add_argument("--timeout", type=float, default=120.0, help="with --boot: seconds before QEMU is killed")
    return p


def _pair(text: str, what: str) -> tuple[str, Path]:
    left, sep, right = text.partition("=")
    if not sep or not left or not right:
        raise SystemExit(f"devmodels guest-image: {what} must look like NAME=PATH, not {text!r}")
    return left, Path(right)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``devmodels guest-image``; return the exit status (0 ok, 1 failed, 2 usage)."""
    args = make_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if (args.kernel is None) != (args.modules is None):
        print("devmodels guest-image: --kernel and --modules go together", file=sys.stderr)
        return 2
    try:
        builder = ImageBuilder(
            kernel=args.kernel, modules_dir=args.modules, kernel_version=args.kernel_version,
            kernel_package=args.kernel_package,
            modules=(() if args.no_default_modules else DEFAULT_MODULES) + tuple(args.module),
            optional_modules=() if args.no_default_modules else DEFAULT_OPTIONAL_MODULES,
            cache_dir=args.cache_dir,
        )
        if args.script is not None:
            builder.set_test_script(args.script.read_text())
        for spec in args.test:
            name, path = _pair(spec, "--test")
            builder.add_test(name, path.read_text())
        for spec in args.file:
            guest, host = _pair(spec, "--file")
            builder.add_file(guest, host, 0o755 if host.stat().st_mode & 0o111 else 0o644)
        for binary in args.binary:
            builder.add_binary_with_libs(binary)
        image = builder.build(progress=args.progress)
    except (DevmodelsError, OSError) as exc:
        print(f"devmodels guest-image: {exc}", file=sys.stderr)
        return 1
    result: dict[str, object] = {
        "kernel": str(image.kernel), "initrd": str(image.initrd), "kernel_version": image.kernel_version,
        "package": image.package, "modules": list(image.modules), "tests": list(image.tests),
        "cache_key": image.cache_key, "from_cache": image.from_cache,
    }
    status = 0
    if args.boot:
        status, result["boot"] = _boot(image.kernel, image.initrd, args.run or (None if image.has_test_script
                                                                                  else "smoke"), args.timeout)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for key in ("kernel", "initrd", "kernel_version", "package"):
            print(f"{key}: {result[key]}")
        boot = result.get("boot")
        if isinstance(boot, dict):
            for name, (passed, detail) in boot["checks"].items():
                print(f"check {name}: {'PASS' if passed else 'FAIL'} {detail}".rstrip())
            print(f"boot: done={boot['done']} exit={boot['exit_code']} elapsed={boot['elapsed']:.1f}s")
    return status


def _boot(kernel: Path, initrd: Path, test: str | None, timeout: float) -> tuple[int, dict[str, object]]:
    from ..qemu.launcher import QemuLauncher, qemu_available

    reason = qemu_available()
    if reason is not None:
        print(f"devmodels guest-image: cannot boot: {reason}", file=sys.stderr)
        return 1, {"error": reason}
    with QemuLauncher(kernel, initrd, test=test) as vm:
        res = vm.wait(timeout)
    ok = res.passed
    if not ok:
        sys.stderr.write(res.log[-4000:])
    return (0 if ok else 1), {"checks": res.checks, "done": res.done, "exit_code": res.exit_code,
                              "elapsed": res.elapsed, "done_after": res.done_after}
