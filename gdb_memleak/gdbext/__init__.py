"""The only package that imports gdb: GdbTarget, the memleak commands and parameters."""
