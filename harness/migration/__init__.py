"""Migrating devices between device-server processes, driven from the VMM side.

``vfio_user``: the vfio-user migration of one device (dirty-logged precopy, STOP,
STOP_COPY, RESUMING) between two ``devmodels vfio-user`` processes, and its downtime.
``scenarios``: a guest doing I/O through testdev, e1000 and AHCI across such a migration,
verified. ``python3 -m harness.migration --device e1000 --runs 5`` measures the downtime.
"""
