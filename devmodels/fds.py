"""Descriptor passing for servers, public for server authors: ``close_fds`` and the
per-message bound ``add_fds_bounded``. The rules are in ``devmodels._fds``.
"""

from ._fds import add_fds_bounded, close_fds

__all__ = ["add_fds_bounded", "close_fds"]
