"""Errors written for the person on call: what failed, why, and what to do about it.

Every error also says whether a retry can help (``transient``): a restart, a dropped connection, a 5xx or
a timeout passes by itself and is retried with backoff; a missing connection, a wrong credential, a
missing bucket, a wrong key or a bad param never does, and fails at once. The cause decides, not the
place: a ``StorageError`` is transient when the endpoint was unreachable and permanent when the bucket
does not exist.
"""

from __future__ import annotations


class WedSyncError(Exception):
    """Base error. ``str()`` reads as one sentence an administrator can act on."""

    transient: bool = False  # the class default; an instance may say otherwise from its cause

    def __init__(self, what: str, why: str = "", fix: str = "", *, transient: bool | None = None) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        if transient is not None:
            self.transient = transient
        super().__init__(self.render())

    def render(self) -> str:
        text = self.what
        if self.why:
            text += f": {self.why}"
        if self.fix:
            text += f". To fix: {self.fix}"
        return text


class ConfigError(WedSyncError):
    """The policy, a connection or a parameter is wrong; nothing has been touched."""


class StorageError(WedSyncError):
    """A storage target could not be reached, read or written (transient unless the cause says otherwise)."""

    transient = True


class CryptoError(WedSyncError):
    """Decryption or authentication failed: wrong key, or tampered, truncated or reordered data."""


class IntegrityError(WedSyncError):
    """Data does not match what the manifest promises (size, checksum, row count)."""


class RestoreError(WedSyncError):
    """A restore could not be carried out; the target is left as it was."""


class MissingTargetError(StorageError, ConfigError):
    """A bucket or directory that does not exist: a set-up fault that no retry will fix."""

    transient = False


class TransientError(WedSyncError):
    """A fault that passes by itself (a server restarting, a connection dropped mid-work, a timeout)."""

    transient = True


class ConcurrentWriterError(WedSyncError):
    """Another run is writing the same backup right now; this one must not touch it."""


# Exceptions outside our hierarchy that a retry can fix: the network, the OS, timeouts.
_TRANSIENT_BUILTINS = (ConnectionError, TimeoutError)


def is_transient(error: BaseException) -> bool:
    """Whether a retry (with backoff) can fix ``error``: classified by its cause.

    Our own errors carry the answer. Others are judged by what they are: connection and timeout errors are
    transient, and so is a PostgreSQL error whose SQLSTATE says the server went away or is starting.
    Anything unknown counts as permanent only when it says so: a bug is retried like the default
    Airflow behaviour, at most ``retries`` times.
    """
    if isinstance(error, WedSyncError):
        return error.transient
    if isinstance(error, _TRANSIENT_BUILTINS):
        return True
    from wedsync_backup.pg import pg_error_is_transient  # psycopg stays out of this module's import

    verdict = pg_error_is_transient(error)
    return True if verdict is None else verdict
