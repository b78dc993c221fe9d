"""Benchmarks for devmodels: ``python -m bench SUBCOMMAND [--json]``.

Each subcommand is a module with ``main(argv) -> int`` registered in ``bench.__main__``.
"""
