"""Reading a target: the Target interface, core files, /proc, loaded modules, ELF symbols,
DWARF, and streaming reads in large chunks.  Nothing here knows about glibc or leaks."""
