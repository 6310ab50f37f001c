"""One process per run directory: an OS-level lock on a file that names its holder.

``RunLock(path).acquire(command)`` takes an exclusive ``flock`` on ``path`` (created if needed)
and writes ``{"pid", "host", "command", "since"}`` into it; a second process gets one
:class:`FtclipError` naming the holder. The kernel drops the lock when its process ends, however
it ends (SIGKILL included), so a lock file left behind by a dead process is *stale*: the next
``acquire`` takes it over and reports whose it was (``RunLock.stale``). ``release()`` removes
the file. On a file system without ``flock`` (some network mounts answer ENOLCK) the file itself
is the lock (created with O_EXCL); it counts as stale when its pid is gone on this host.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from ftclip.errors import FtclipError

LOCK_FILE = ".lock"  # in a run directory
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def _me(command: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": dt.datetime.now().isoformat(timespec="seconds")}


def _parse(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _read(path: Path) -> dict:
    try:
        return _parse(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # exists but not ours, or unreadable: assume alive
    return True


def describe(info: dict) -> str:
    """``ftclip fit (pid 123 on host h, since 2026-01-01T10:00:00)``."""
    return (f"{info.get('command', 'a process')} (pid {info.get('pid', '?')} on host {info.get('host', '?')}"
            f"{', since ' + str(info['since']) if info.get('since') else ''})")


class RunLock:
    def __init__(self, path: str | Path, what: str = "run directory"):
        self.path = Path(path)
        self.what = what
        self.fd: int | None = None
        self.stale: dict | None = None  # the holder recorded in a lock file its dead owner left behind
        self._exclusive_file = False

    # ------------------------------------------------------------------ taking and giving back
    def acquire(self, command: str) -> "RunLock":
        for _ in range(10):  # the file may be removed by a releasing owner between open and flock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(_read(self.path))
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_FLOCK:
                    return self._acquire_exclusive_file(command)
                raise
            if not self._is_our_file(fd):
                os.close(fd)
                continue
            previous = _parse(os.pread(fd, 65536, 0).decode("utf-8", "replace"))
            self.stale = previous or None
            self._write(fd, _me(command))
            self.fd = fd
            return self
        raise FtclipError(f"could not take the lock {self.path}: it keeps being replaced; retry")

    def release(self) -> None:
        if self.fd is not None:
            try:
                if self._is_our_file(self.fd):
                    self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)  # drops the flock
            self.fd = None
        elif self._exclusive_file:
            if _read(self.path).get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self._exclusive_file = False

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ who holds it
    def holder(self) -> dict | None:
        """The live holder's record, or None when nobody holds the lock (a stale file counts as free)."""
        if self.fd is not None or self._exclusive_file:
            return _read(self.path) or None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read(self.path) or {"command": "a process"}
            except OSError as exc:
                if exc.errno not in _NO_FLOCK:
                    raise
                info = _read(self.path)
                return info if info and not self._is_stale(info) else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ helpers
    def _refuse(self, info: dict) -> None:
        advice = (f"wait for it to finish, or stop it (kill {info['pid']}: it saves a checkpoint and exits)"
                  if info.get("pid") and info.get("host") == socket.gethostname() else "wait for it to finish")
        raise FtclipError(f"{self.what} {self.path.parent} is in use by {describe(info)} ({self.path}); {advice}, "
                          "then run the command again")

    def _is_our_file(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _write(fd: int, info: dict) -> None:
        data = (json.dumps(info) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    @staticmethod
    def _is_stale(info: dict) -> bool:
        return info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid"))

    def _acquire_exclusive_file(self, command: str) -> "RunLock":
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                info = _read(self.path)
                if info and not self._is_stale(info):
                    self._refuse(info)
                self.stale = info or None
                self.path.unlink(missing_ok=True)
                continue
            try:
                self._write(fd, _me(command))
            finally:
                os.close(fd)
            self._exclusive_file = True
            return self
        raise FtclipError(f"could not take the lock {self.path}; retry")
