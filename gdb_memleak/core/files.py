"""Files we write may hold the target's secrets: every one is created 0600 with O_EXCL and
O_NOFOLLOW, inside a folder reached without following any symbolic link (each component of the
path is opened with O_NOFOLLOW from the root), and a write that fails removes what it half
wrote and says how much was written."""
from __future__ import annotations

import errno
import os
from typing import List, Optional, Tuple

from .errors import MemleakError

_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_folder(path: str, create: bool = False, mode: int = 0o700) -> int:
    """A file descriptor of the folder ``path``; no component may be a symbolic link.  With
    ``create`` missing folders are made (``mode``)."""
    full = os.path.abspath(path)
    parts = [p for p in full.split(os.sep) if p]
    fd = os.open(os.sep, _DIR)
    walked = os.sep
    try:
        for comp in parts:
            walked = os.path.join(walked, comp)
            try:
                nfd = os.open(comp, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise MemleakError("folder %s does not exist" % walked)
                try:
                    os.mkdir(comp, mode, dir_fd=fd)
                except OSError as e:
                    raise MemleakError("cannot create folder %s: %s" % (walked, e.strerror))
                nfd = os.open(comp, _DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    if os.path.islink(walked):
                        raise MemleakError("%s is a symbolic link: give the real folder (%s); links are never "
                                           "followed" % (walked, os.path.realpath(walked)))
                    raise MemleakError("%s is not a folder" % walked)
                raise MemleakError("cannot open folder %s: %s" % (walked, e.strerror))
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def split(path: str) -> Tuple[str, str]:
    folder, name = os.path.split(os.path.abspath(path))
    if not name or name in (".", ".."):
        raise MemleakError("%s is not a file name" % path)
    return folder, name


def create(path: str, overwrite: bool = False, dir_fd: Optional[int] = None, name: Optional[str] = None) -> int:
    """A new file 0600, never through a symlink; an existing one is an error unless
    ``overwrite`` (then it is replaced: unlinked first, never written through)."""
    own = dir_fd is None
    if own:
        folder, name = split(path)
        dir_fd = open_folder(folder)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            if not overwrite:
                raise MemleakError("%s exists: pass --force to overwrite" % path)
            import stat
            if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise MemleakError("%s is a symbolic link: refusing to follow or replace it" % path)
            try:
                os.unlink(name, dir_fd=dir_fd)
            except IsADirectoryError:
                raise MemleakError("%s is a folder" % path)
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise MemleakError("%s is a symbolic link: refusing to follow it" % path)
            raise MemleakError("cannot create %s: %s" % (path, e.strerror))
        os.fchmod(fd, 0o600)
        return fd
    finally:
        if own:
            os.close(dir_fd)


def write_all(fd: int, data, path: str, written: int = 0) -> int:
    """Write ``data`` to ``fd``; OSError becomes one line saying how much was written."""
    mv = memoryview(data)
    try:
        while len(mv):
            n = os.write(fd, mv)
            mv = mv[n:]
            written += n
    except OSError as e:
        raise WriteError(path, e, written)
    return written


class WriteError(MemleakError):
    def __init__(self, path: str, err: OSError, written: int):
        self.path, self.strerror, self.written = path, err.strerror or str(err), written
        super().__init__("cannot write %s: %s (%d bytes were written; the partial file was removed)" % (
            path, self.strerror, written))


def write_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a 0600 temporary file in the same folder, then a
    rename that replaces ``path`` itself, never what it links to)."""
    folder, name = split(path)
    dfd = open_folder(folder)
    tmp = ".%s.tmp.%d" % (name, os.getpid())
    try:
        try:
            os.unlink(tmp, dir_fd=dfd)          # a stale temporary of ours (or a planted link)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise MemleakError("cannot write %s: %s" % (path, e.strerror))
        fd = create(os.path.join(folder, tmp), dir_fd=dfd, name=tmp)
        try:
            write_all(fd, data, path)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except IsADirectoryError:
            raise MemleakError("%s is a folder" % path)
        except OSError as e:
            raise MemleakError("cannot write %s: %s" % (path, e.strerror))
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise
    finally:
        os.close(dfd)


class FileSet:
    """Files one command creates in one folder: all removed again if the command fails or is
    interrupted before ``keep()``."""

    def __init__(self, folder: str):
        self.folder = folder
        self.dir_fd = open_folder(folder, create=True)
        self.names: List[str] = []

    def create(self, name: str, overwrite: bool = False) -> int:
        fd = create(os.path.join(self.folder, name), overwrite, self.dir_fd, name)
        self.names.append(name)
        return fd

    def discard(self) -> None:
        for n in self.names:
            try:
                os.unlink(n, dir_fd=self.dir_fd)
            except OSError:
                pass
        self.names = []

    def close(self) -> None:
        os.close(self.dir_fd)
