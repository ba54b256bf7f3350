"""The manifest: one JSON document per backup that makes the repository self-describing.

It is written last, on every target, and is the commit marker: objects of a backup without a manifest are
incomplete and ignored. Everything needed to verify and restore a backup (and to rebuild the catalog) is
in here; nothing in it is table data. It is authenticated with a MAC keyed from the backup's data key, so
a manifest edited on one target is detected at restore time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from wedsync_backup import FORMAT_VERSION
from wedsync_backup.errors import IntegrityError

BACKUP_TYPES = ("full", "incremental", "archive", "manual", "wedding")


def backup_prefix(backup_id: str) -> str:
    return f"backups/{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return f"backups/{backup_id}/manifest.json"


def pending_manifest_key(backup_id: str) -> str:
    """Where a backup's manifest waits until every copy is verified and it can be committed."""
    return f"backups/{backup_id}/manifest.pending.json"


@dataclass
class StoredObject:
    """One encrypted object of a backup; ``key`` is relative to the target root."""

    key: str
    stored_bytes: int
    stored_sha256: str
    plain_bytes: int
    plain_sha256: str


@dataclass
class TableEntry:
    """One table's data: one or more parts (large tables are split by block range and exported in parallel).

    ``content_sha256`` is the table's content checksum: sha256 over its parts' plaintext checksums, in order.
    """

    schema: str
    name: str
    priority: str  # critical | high | standard
    columns: list[str]
    row_count: int
    parts: list[StoredObject]
    content_sha256: str
    relkind: str = "r"  # r ordinary table or partition leaf
    parent: str | None = None  # the partitioned table a leaf belongs to
    # pg_dump TOC entries ("INDEX <name>", "CONSTRAINT <table> <name>") a restore may build as soon as this
    # table's data is in, while other tables still load
    index_entries: list[str] = field(default_factory=list)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def plain_bytes(self) -> int:
        return sum(p.plain_bytes for p in self.parts)

    @property
    def stored_bytes(self) -> int:
        return sum(p.stored_bytes for p in self.parts)

    @property
    def plain_sha256(self) -> str:
        return self.content_sha256


def _shape_like(value: Any, raw: Any) -> Any:
    if isinstance(value, dict) and isinstance(raw, dict):
        return {k: _shape_like(v, raw.get(k)) for k, v in value.items() if k in raw or v not in (None, [], {})}
    if isinstance(value, list) and isinstance(raw, list) and len(value) == len(raw):
        return [_shape_like(v, r) for v, r in zip(value, raw, strict=True)]
    return value


def content_checksum(parts: list[StoredObject]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.plain_sha256.encode() + b"\n")
    return h.hexdigest()


@dataclass
class SequenceEntry:
    schema: str
    name: str
    last_value: int
    is_called: bool


@dataclass
class Manifest:
    backup_id: str
    backup_type: str
    created_at: str  # ISO 8601 UTC: when the consistent snapshot was taken
    source: dict[str, Any]  # server_version, database, system_identifier
    consistent_point: dict[str, Any]  # snapshot, lsn, txid_snapshot, time
    encryption: dict[str, Any]  # algorithm, key_id, wrapped_key, chunk_size
    compression: dict[str, Any]  # algorithm, level
    schema: dict[str, Any]  # object (StoredObject as dict), format, schemas, pg_dump_version
    tables: list[TableEntry] = field(default_factory=list)
    sequences: list[SequenceEntry] = field(default_factory=list)
    parent_backup_id: str | None = None
    changes: dict[str, Any] | None = None  # incremental: {"object": StoredObject, "format": ...}
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    mac: str | None = None

    # --- derived -----------------------------------------------------------------------------
    @property
    def schema_object(self) -> StoredObject:
        return StoredObject(**self.schema["object"])

    @property
    def changes_object(self) -> StoredObject | None:
        return StoredObject(**self.changes["object"]) if self.changes else None

    def objects(self) -> list[StoredObject]:
        """Every stored object of the backup except the manifest itself."""
        out = [self.schema_object] if self.schema.get("object") else []
        out += [p for t in self.tables for p in t.parts]
        if self.changes_object:
            out.append(self.changes_object)
        if self.extra.get("large_objects"):  # full backups: the large objects' contents (large_objects.py)
            out.append(StoredObject(**self.extra["large_objects"]["object"]))
        return out

    @property
    def total_rows(self) -> int:
        return sum(t.row_count for t in self.tables)

    @property
    def plain_bytes(self) -> int:
        return sum(o.plain_bytes for o in self.objects())

    @property
    def stored_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.objects())

    # --- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def body_bytes(self) -> bytes:
        """Canonical JSON of everything but the MAC: what the MAC covers.

        A manifest read from storage is authenticated over exactly the fields it was written with, so a
        newer release that adds (defaulted) fields still verifies older manifests.
        """
        d = self._shaped_dict()
        d.pop("mac", None)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    def _shaped_dict(self) -> dict[str, Any]:
        """to_dict(), minus empty fields the manifest was read without (added by a newer release)."""
        d = self.to_dict()
        raw = getattr(self, "_read_body", None)
        return _shape_like(d, raw) if raw is not None else d

    def to_bytes(self) -> bytes:
        return json.dumps(self._shaped_dict(), sort_keys=True, indent=1).encode() + b"\n"

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        raw = json.loads(json.dumps(d))
        d = dict(d)
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise IntegrityError(
                f"Manifest of backup {d.get('backup_id')} has format version {version}",
                f"this WedSync Backup reads version {FORMAT_VERSION}",
                "restore it with the WedSync Backup release that wrote it",
            )
        d["tables"] = [
            TableEntry(**{**t, "parts": [StoredObject(**p) for p in t["parts"]]}) for t in d.get("tables", [])
        ]
        d["sequences"] = [SequenceEntry(**s) for s in d.get("sequences", [])]
        manifest = cls(**d)
        manifest._read_body = raw
        return manifest

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest") -> Manifest:
        try:
            return cls.from_dict(json.loads(data))
        except (ValueError, TypeError, KeyError) as e:
            raise IntegrityError(
                f"The {source} is not a valid WedSync manifest", str(e), "restore from another target"
            ) from e
