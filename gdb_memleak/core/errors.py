"""The one error family of the core. Messages are single lines a user can act on."""


class MemleakError(Exception):
    """Base of every error the user can cause or fix."""


class UsageError(MemleakError):
    """Bad arguments: wrong option, reversed range, unknown kind."""


class MemoryReadError(MemleakError):
    """An address range that cannot be read from the target."""

    def __init__(self, address, length, reason="unreadable"):
        self.address = address
        self.length = length
        self.reason = reason
        super().__init__("cannot read %d bytes at 0x%x: %s" % (length, address, reason))


class TargetError(MemleakError):
    """The target cannot be opened or understood (missing core, truncated core, wrong arch)."""


class DependencyError(MemleakError):
    """A Python dependency is missing."""


class Interrupted(MemleakError):
    """The user pressed Ctrl-C; work stopped cleanly."""
