"""Launching QEMU (``launcher``) with the guests and attachments the harness needs."""
