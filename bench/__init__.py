"""Benchmarks for devmodels: ``python -m bench SUBCOMMAND [--json]``.

Each subcommand is a module with ``main(argv) -> int`` registered in ``bench.__main__``. The
guest benches share ``bench.common`` (guest jobs under deadlines, fio figures, paired runs,
the guest options, the output) and fail loudly: exit status 1 naming the job and the side
whenever a run has no figure. Each takes a ``boot`` seam that tests fill with
``bench.testing.FakeGuest``.

To add an attachment path to a guest bench (``--path vfio-user``): add an
``Attachment(name, qemus, about)`` to the bench's ``PATHS`` and let its ``boot`` start our
server and QEMU's client for ``config.path == name``; the options, the QEMU version check
and the output come with it. ``bench.vfio_user`` is the vfio-user one (``VFIO_USER``,
``serve``, the ``-device`` JSON, our server's and QEMU's counters), used by ``e1000``,
``ahci``, ``virtio-blk`` and ``paradigms``.
"""
