"""gdb-free analysis: targets, parsers, classification, rendering.

Nothing in this package may import gdb; ``gdb_memleak.gdbext`` is the only adapter.
"""
