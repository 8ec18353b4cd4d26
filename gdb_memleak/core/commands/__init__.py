"""The command layer: one module per subcommand over a Target, exposed by both front ends
(gdb's ``memleak`` prefix in gdbext/commands.py and the offline CLI in cli.py).  ``base``
holds what they share; this module is the registry."""
from __future__ import annotations

from typing import Dict, List

from .base import Command


def registry() -> List[Command]:
    from . import census, dump, heap, leaks, maps, report, snapshot, strings, threads, vgdb, whatis
    return [maps.MapsCommand(), dump.DumpCommand(), census.CensusCommand(), heap.HeapCommand(),
            leaks.LeaksCommand(), threads.ThreadsCommand(), whatis.WhatisCommand(),
            strings.StringsCommand(), snapshot.SnapshotCommand(), snapshot.DiffCommand(),
            vgdb.VgdbLeakCheck(), vgdb.VgdbBlocks(), vgdb.VgdbWhoPointsAt(), vgdb.VgdbWatch(),
            report.ReportCommand()]


def by_name() -> Dict[str, Command]:
    return {c.name: c for c in registry()}
