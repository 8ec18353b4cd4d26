"""Settings shared by both front ends: gdb parameters (``set memleak …``) and CLI flags fill this."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    debug: bool = False                 # keep tracebacks of internal errors
    max_dump_size: int = 1 << 30        # memleak dump refuses more than this without --force
    progress: bool = True               # progress lines on work over ~2 s
