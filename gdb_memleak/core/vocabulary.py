"""One vocabulary for every table, JSON key and message (docs/ARCHITECTURE.md, glossary)."""
from __future__ import annotations

NO_CLASS = "(no class)"          # an allocation whose first word is no vtable pointer we know

# an orphan stack: a thread-stack-shaped mapping no live thread owns, and why
ORPHAN = "orphan stack"
ORPHAN_REASONS = {
    "exited-unjoined": "its thread exited and was never joined",
    "cached": "cached by glibc after join/detach",
    "unowned": "no glibc thread structure names it",
    "no-registers": "a live thread whose registers are unavailable (damaged core)",
}


def plural(n: int, word: str, many: str = None) -> str:
    """'1 thread', '2 threads' (``many`` for irregular plurals)."""
    return "%d %s" % (n, word if n == 1 else (many or word + "s"))


def article(word: str) -> str:
    """'a' or 'an' for ``word`` (by its first letter: C++ names read as spelled)."""
    return "an" if word[:1].lower() in "aeiou" else "a"
