"""QEMU integration: launching guests (``launcher``) and the multi-process proxy (``mpqemu``)."""
