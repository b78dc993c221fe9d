"""Serving devmodels devices to VMMs from the command line.

- ``registry``: the one table of device names and ``--backend``/``--opt`` specs every
  server command and the in-process ``Machine`` build from;
- ``mpqemu_cmd``, ``vfio_user_cmd``, ``vhost_user_cmd``: ``devmodels mpqemu``,
  ``devmodels vfio-user``, ``devmodels vhost-user`` — each builds a device from the
  registry, serves it with ``devmodels.runtime.DeviceRunner`` on one ``EventLoop``, and runs
  the protocol server of its attachment;
- ``common``: what the three commands share (device arguments, signals, stats lines).
"""
