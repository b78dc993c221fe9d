"""devmodels on KVM, in process: a VM whose exits go straight to our buses, and ELF payloads.

Importing this package needs no ``/dev/kvm``; creating a ``Kvm``, ``Vm`` or ``KvmMachine``
opens it and raises ``KvmError`` (a ``HostError`` naming the ioctl and errno) where KVM is
missing or refuses. ``unavailable()`` says why KVM cannot run guests here, for skips.

- ``KvmMachine``: a ``devmodels.Machine`` run by one vCPU, exits dispatched to its buses,
  devices served by ``devmodels.runtime.DeviceRunner``, interrupts through KVM's irqchip
  (``_vmm``, ``_irqs``, ``_kick``);
- ``Kvm``, ``Vm``, ``Vcpu``: the ioctls (``_system``, ``_vm``, ``_vcpu``, ``_ioctl``, ``abi``);
- ``ElfImage``: ELF payloads parsed with pyelftools, checked and loaded (``_elf``); the
  64-bit entry state is set up by the loader (``_boot``);
- ``kvm.payloads``: the freestanding C device-test payloads and their builder.
"""

from ._elf import MAX_FILE, MAX_SEGMENTS, MAX_SYMBOLS, ElfError, ElfImage, Note, Segment, Symbol, Window
from ._ioctl import KvmError
from ._irqs import KvmInterrupts, MsiMode
from ._kick import KICK_SIGNAL, VmmLoop, install_kick_handler
from ._system import DEV_KVM, Kvm, unavailable
from ._vcpu import Vcpu
from ._vm import Vm
from ._vmm import PORT_CONSOLE, PORT_EXIT, KvmMachine, Results, RunResult

__all__ = [
    "MAX_FILE",
    "MAX_SEGMENTS",
    "MAX_SYMBOLS",
    "ElfError",
    "ElfImage",
    "Note",
    "Segment",
    "Symbol",
    "Window",
    "KvmError",
    "KvmInterrupts",
    "MsiMode",
    "KICK_SIGNAL",
    "VmmLoop",
    "install_kick_handler",
    "DEV_KVM",
    "Kvm",
    "unavailable",
    "Vcpu",
    "Vm",
    "PORT_CONSOLE",
    "PORT_EXIT",
    "KvmMachine",
    "Results",
    "RunResult",
]
