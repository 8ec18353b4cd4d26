"""Turning result data into text tables and JSON files.  Nothing here reads the target."""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

from .errors import MemleakError

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


def write_text(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to ``path`` atomically: a tmp file created with ``mode`` (never through a
    symlink, never over an existing tmp), then renamed over ``path``."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise MemleakError("cannot write %s: %s" % (path, e.strerror or e))


def write_json(path: str, obj, mode: int = 0o644) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n", mode)


def hexaddr(a) -> str:
    return "0x%x" % a if a is not None else "-"
