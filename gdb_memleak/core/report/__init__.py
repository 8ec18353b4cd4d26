"""Rendering of the `memleak report` document (cmd_report.collect): text tables for the terminal
(text.py) and one self-contained HTML page (html.py: Jinja2 + plotly, the plotly.js bundle
inlined).  Nothing here reads the target."""
from __future__ import annotations

from collections import OrderedDict

# the sections, in page order: id -> heading (the same words in the text output and the page)
SECTIONS = OrderedDict([
    ("findings", "What to look at"),
    ("memory", "Where the memory went"),
    ("address-space", "The address space"),
    ("classes", "Top classes: live vs leaked"),
    ("leaks", "Leaks by class and by size"),
    ("threads", "Thread stacks"),
    ("growth", "Growth since the baseline"),
])


def sections(doc) -> "OrderedDict[str, str]":
    """The sections this document has (growth only with a baseline)."""
    return OrderedDict((k, v) for k, v in SECTIONS.items() if k != "growth" or doc.get("growth") is not None)


def hex_ascii(hexbytes, n: int = 16) -> str:
    if hexbytes is None:
        return "(unreadable)"
    from ..commands.leaks import hex_ascii as _hx
    return _hx(bytes.fromhex(hexbytes)[:n])
