"""Turning result data into text tables and JSON files.  Nothing here reads the target."""
from __future__ import annotations

import json
from typing import Iterable, Sequence


try:
    from tabulate import tabulate as _tabulate
except ImportError:  # pragma: no cover
    _tabulate = None


def table(rows: Iterable[Sequence], headers: Sequence[str], colalign=None) -> str:
    rows = [list(r) for r in rows]
    if _tabulate is not None:
        return _tabulate(rows, headers=list(headers), tablefmt="simple", disable_numparse=True,
                         colalign=colalign)
    widths = [max([len(str(h))] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_text(path: str, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically, 0600, never through a symlink (see files.py)."""
    from .files import write_file
    write_file(path, text.encode())


def write_json(path: str, obj, mode: int = 0o600) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, 0600."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def hexaddr(a) -> str:
    return "0x%x" % a if a is not None else "-"
