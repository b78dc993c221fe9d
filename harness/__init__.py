"""The top floor of devmodels: what runs guests around our devices.

Layers (arrows point to what a layer may import)::

    devmodels (core: bus, memory, irq, pci, state, trace; emulated devices; backends)
        <- virtio, passthrough (devices, transports; the vhost-user and vfio-user servers)
        <- mpqemu (the server for QEMU 7.2's x-pci-proxy-dev)
        <- harness (QEMU launcher, guest images, conformance; imported only by itself,
           benches and tests)

``harness.qemu`` launches QEMU, ``harness.guest`` builds guest images, ``harness.conformance``
boots guests whose devices devmodels serves and checks what their drivers did.
"""
