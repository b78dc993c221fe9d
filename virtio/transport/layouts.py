"""Wire layouts of the virtio PCI capabilities (VIRTIO 1.2 §4.1.4), as ``construct`` structs.

Named as in the specification. They are built once per function at construction time and
parsed by the driver-side helpers in ``virtio.transport.testing``; nothing here parses
guest-controlled data on a hot path.
"""

from __future__ import annotations

import construct as cs

__all__ = [
    "virtio_pci_cap",
    "virtio_pci_notify_cap",
    "virtio_pci_cfg_cap",
    "virtio_pci_common_cfg",
]

# §4.1.4: the capability header every virtio structure capability starts with.
virtio_pci_cap = cs.Struct(
    "cap_vndr" / cs.Int8ul,
    "cap_next" / cs.Int8ul,
    "cap_len" / cs.Int8ul,
    "cfg_type" / cs.Int8ul,
    "bar" / cs.Int8ul,
    "id" / cs.Int8ul,
    "padding" / cs.Padding(2),
    "offset" / cs.Int32ul,
    "length" / cs.Int32ul,
)

# §4.1.4.4: the notification capability adds the queue_notify_off multiplier.
virtio_pci_notify_cap = cs.Struct(
    "cap" / virtio_pci_cap,
    "notify_off_multiplier" / cs.Int32ul,
)

# §4.1.4.9: the PCI configuration access capability adds a 4-byte data window.
virtio_pci_cfg_cap = cs.Struct(
    "cap" / virtio_pci_cap,
    "pci_cfg_data" / cs.Bytes(4),
)

# §4.1.4.3: the common configuration structure (64-bit fields as in the specification).
virtio_pci_common_cfg = cs.Struct(
    "device_feature_select" / cs.Int32ul,
    "device_feature" / cs.Int32ul,
    "driver_feature_select" / cs.Int32ul,
    "driver_feature" / cs.Int32ul,
    "config_msix_vector" / cs.Int16ul,
    "num_queues" / cs.Int16ul,
    "device_status" / cs.Int8ul,
    "config_generation" / cs.Int8ul,
    "queue_select" / cs.Int16ul,
    "queue_size" / cs.Int16ul,
    "queue_msix_vector" / cs.Int16ul,
    "queue_enable" / cs.Int16ul,
    "queue_notify_off" / cs.Int16ul,
    "queue_desc" / cs.Int64ul,
    "queue_driver" / cs.Int64ul,
    "queue_device" / cs.Int64ul,
    "queue_notify_data" / cs.Int16ul,
    "queue_reset" / cs.Int16ul,
)
