"""The exceptions the CLI turns into one line.

Anything a user can fix (a path, a key, a value, a file) raises :class:`FtclipError`
with a message that names the culprit and says what to do. The CLI prints the message
on one line and exits with status 2 -- no traceback.

:class:`Interrupted` is not a mistake: a signal (SIGTERM, SIGINT, SLURM's requeue signal)
stopped a run; the CLI prints its line and exits with 128 + the signal number.
"""

from __future__ import annotations

import signal


class FtclipError(Exception):
    """A user-facing error: bad input, bad config, missing weights, bad data."""


class ConfigError(FtclipError):
    """A recipe or override is wrong (unknown key, wrong type, missing value)."""


class DataError(FtclipError):
    """A data set is missing, unreadable or not in a known layout."""


class DiskFullError(FtclipError):
    """No space was left on a device while writing ``path``; nothing half-written was kept."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class DivergedError(FtclipError):
    """Training produced a non-finite loss or non-finite weights; no checkpoint of them was written."""


class Interrupted(BaseException):
    """A signal stopped the run. ``stage``/``epoch``/``step`` say where its resume continues.

    A ``BaseException`` (like ``KeyboardInterrupt``), so ``except Exception`` blocks do not swallow it.
    """

    def __init__(self, signum: int, stage: str | None = None, epoch: int | None = None, step: int | None = None,
                 run: str | None = None, main: bool = True, note: str = ""):
        super().__init__(signum)
        self.signum, self.stage, self.epoch, self.step = int(signum), stage, epoch, step
        self.run, self.main, self.note = run, main, note

    @property
    def signal_name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + its number (SIGTERM 143, SIGINT 130)."""
        return 128 + self.signum

    def line(self) -> str:
        where = (f" at stage {self.stage}, epoch {self.epoch or 0}, step {self.step or 0}"
                 if self.stage is not None else "")
        resume = f"; resume with: ftclip fit --resume {self.run or 'RUN_DIR'}"
        return f"interrupted{where}{resume}" + (f"; {self.note}" if self.note else "")

    def __str__(self) -> str:
        return self.line()
