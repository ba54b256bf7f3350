"""Errors written for the person on call: what failed, why, and what to do about it."""

from __future__ import annotations


class WedSyncError(Exception):
    """Base error. ``str()`` reads as one sentence an administrator can act on."""

    def __init__(self, what: str, why: str = "", fix: str = "") -> None:
        self.what = what
        self.why = why
        self.fix = fix
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
    """A storage target could not be reached, read or written."""


class CryptoError(WedSyncError):
    """Decryption or authentication failed: wrong key, or tampered, truncated or reordered data."""


class IntegrityError(WedSyncError):
    """Data does not match what the manifest promises (size, checksum, row count)."""


class RestoreError(WedSyncError):
    """A restore could not be carried out; the target is left as it was."""


class MissingTargetError(StorageError, ConfigError):
    """A bucket or directory that does not exist: a set-up fault that no retry will fix."""
