"""Emulated AHCI 1.3 SATA controller (Intel ICH9, 8086:2922) with ATA disks and ATAPI CD-ROMs.

The VMM builds an ``AhciController`` on guest RAM, attaches drives, plugs it into a PCI
host (or serves it through a proxy) and calls ``poll()`` whenever a block backend signals
completions::

    hba = AhciController(memory, ports=6)
    hba.attach(0, AtaDisk(RawFileBackend("disk.img")))
    hba.attach(1, AtapiCdrom(RawFileBackend("cd.iso", readonly=True)))

Modules: ``regs`` (register map), ``layouts`` and ``fis`` (memory structures and FISes),
``port`` (command engine), ``hba`` (the PCI function), ``ata``/``atapi``/``identify``
(the drives), ``command`` (port-drive contract), ``state`` (snapshots), ``errors``,
``testing`` (a driver simulator doing what Linux libahci does).
"""

from . import defs, layouts, regs
from .ata import SECTOR_SIZE, AtaDisk
from .atapi import AtapiCdrom, Sense
from .command import Command, DataPhase, Drive, Finish, Outcome, Pending, Prdt
from .errors import AhciGuestError, BadCommandFis, BusMasterDisabled, PrdtOverflow, PrdtUnderflow
from .fis import TaskFile, build_d2h, build_dma_setup, build_h2d, build_pio_setup, build_sdb, parse_h2d
from .hba import AhciController
from .identify import DriveInfo, ata_string, identify_device, identify_packet_device
from .port import AhciPort, LinkState
from .snapshot import SNAPSHOT_KIND
from .state import AhciState, AtaDiskState, AtapiState, PortState

__all__ = [
    "SNAPSHOT_KIND",
    "defs",
    "layouts",
    "regs",
    "SECTOR_SIZE",
    "AtaDisk",
    "AtapiCdrom",
    "Sense",
    "Command",
    "DataPhase",
    "Drive",
    "Finish",
    "Outcome",
    "Pending",
    "Prdt",
    "AhciGuestError",
    "BadCommandFis",
    "BusMasterDisabled",
    "PrdtOverflow",
    "PrdtUnderflow",
    "TaskFile",
    "build_d2h",
    "build_dma_setup",
    "build_h2d",
    "build_pio_setup",
    "build_sdb",
    "parse_h2d",
    "AhciController",
    "DriveInfo",
    "ata_string",
    "identify_device",
    "identify_packet_device",
    "AhciPort",
    "LinkState",
    "AhciState",
    "AtaDiskState",
    "AtapiState",
    "PortState",
]
