"""gdb_memleak: where did the memory of a C/C++ process go (gdb extension + offline CLI)."""

__version__ = "0.1.0"
