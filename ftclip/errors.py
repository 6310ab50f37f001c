"""The one exception type for user mistakes.

Anything a user can fix (a path, a key, a value, a file) raises :class:`FtclipError`
with a message that names the culprit and says what to do. The CLI prints the message
on one line and exits with status 2 -- no traceback.
"""


class FtclipError(Exception):
    """A user-facing error: bad input, bad config, missing weights, bad data."""


class ConfigError(FtclipError):
    """A recipe or override is wrong (unknown key, wrong type, missing value)."""


class DataError(FtclipError):
    """A data set is missing, unreadable or not in a known layout."""
