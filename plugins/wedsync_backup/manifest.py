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

# Whole-database exports that start an incremental chain: the daily full, and a full taken by hand (manual).
FULL_TYPES = ("full", "manual")
BACKUP_TYPES = ("full", "incremental", "archive", "manual", "wedding", "pre_restore")


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
class ConsistentPoint:
    """The moment a backup is consistent at: its snapshot, LSN and time (typed view of ``consistent_point``)."""

    time: str | None = None  # ISO 8601 UTC
    lsn: str | None = None
    snapshot: str | None = None
    txid_snapshot: str | None = None
    slot: str | None = None  # a full backup that starts a logical chain: the chain's replication slot
    method: str | None = None  # watermark captures say so; logical ones leave it out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConsistentPoint:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass
class ChainSection:
    """How a full backup starts a chain of incrementals (or why it starts none).

    ``method``: logical (a slot exported with the backup's snapshot), watermark (updated_at captures, no
    deletes) or none (full backups only).
    """

    method: str
    slot: str | None = None
    schema_fingerprint: str | None = None
    replica_identity_full_set: list[str] = field(default_factory=list)
    # incrementals (read from the capture's fields): the chain's ids from its full on, this one last
    backup_ids: list[str] = field(default_factory=list)
    start_lsn: str | None = None
    end_lsn: str | None = None
    closes_chain: bool = False
    captures_deletes: bool = True
    ddl_capture: dict[str, Any] | None = None  # the source-side schema-change capture (logical/ddl.py) state
    schema_objects: dict[str, Any] | None = None  # the objects by OID at the chain's start (logical/objects.py)
    # the same schema under earlier fingerprint versions ({"v2": ...}): the chain this full closes may have
    # started under one of them, and is closed against its own kind of fingerprint (logical/ddl.py)
    earlier_fingerprints: dict[str, str] = field(default_factory=dict)

    def fingerprint(self, version: int | None) -> str | None:
        """This schema's fingerprint of ``version`` (None: the current one), when recorded."""
        if version is None or str(self.schema_fingerprint or "").startswith(f"v{version}:"):
            return self.schema_fingerprint
        return self.earlier_fingerprints.get(f"v{version}")


@dataclass
class Provenance:
    """Who made the backup, why, and under which verdict: what the catalog row holds beyond the data.

    Carried by the manifest so that a catalog rebuilt from the repository loses none of it.
    """

    created_by: str
    dag_id: str | None = None
    run_id: str | None = None
    reason: str | None = None
    rule_321: dict[str, Any] | None = None  # the 3-2-1 verdict recorded when the backup began
    warnings: list[str] = field(default_factory=list)
    retention_until: str | None = None  # ISO 8601; None: kept until a newer policy prunes it


@dataclass
class WeddingEntry:
    """One wedding of a wedding backup, readable without the others (weddings/export.py): its own object, or
    (``offset`` set) a piece of its batch's bundle, ``object`` then describing the piece (bundle key, the
    piece's sizes and checksums)."""

    wedding_id: str
    wedding_date: str | None
    phase: str  # planning | preparation | execution | post_event
    object: StoredObject
    row_counts: dict[str, int]  # "schema.table" -> the wedding's rows (root and slice tables)
    parent_row_counts: dict[str, int] = field(default_factory=dict)  # parent rows recorded with it
    retention_policy: str | None = None
    offset: int | None = None  # where its piece starts in the bundle ``object.key``; None: an object of its own

    @property
    def rows(self) -> int:
        return sum(self.row_counts.values())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeddingEntry:
        return cls(**{**d, "object": StoredObject(**d["object"])})


@dataclass
class WeddingsSection:
    """A wedding backup: which weddings, of which slice definition, read at which moment."""

    root: str  # the wedding table, "schema.table"
    key: str
    time_zone: str
    tables: list[str]  # the slice's tables in load order (root first)
    parents: list[str]  # parent tables in load order
    weddings: list[WeddingEntry] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)  # ids asked for by name (backup_wedding_now)
    bundles: list[StoredObject] = field(default_factory=list)  # one per batch: its weddings' pieces

    def entry(self, wedding_id: str) -> WeddingEntry | None:
        return next((w for w in self.weddings if w.wedding_id == wedding_id), None)

    def objects(self) -> list[StoredObject]:
        """The stored objects: the bundles, and the weddings that have an object of their own."""
        return [*self.bundles, *(w.object for w in self.weddings if w.offset is None)]

    def pieces(self) -> dict[str, list[tuple[int, StoredObject]]]:
        """Bundle key -> its pieces (offset, the piece), in order: what reading a bundle through checks."""
        out: dict[str, list[tuple[int, StoredObject]]] = {b.key: [] for b in self.bundles}
        for w in self.weddings:
            if w.offset is not None:
                out.setdefault(w.object.key, []).append((w.offset, w.object))
        return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WeddingsSection:
        return cls(**{
            **d,
            "weddings": [WeddingEntry.from_dict(w) for w in d.get("weddings", [])],
            "bundles": [StoredObject(**b) for b in d.get("bundles", [])],
        })  # fmt: skip


@dataclass
class ConfigTable:
    """One configuration table's rows (COPY text), from the database ``ConfigurationsSection.tables_conn_id``."""

    schema: str
    name: str
    columns: list[str]
    row_count: int
    object: StoredObject

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class ConfigurationsSection:
    """The configurations component: what rebuilds the backup system itself (configurations/).

    Only names are here; the policy text, the connections (with their secrets) and the variables are in
    the encrypted objects.
    """

    policy: StoredObject  # the policy YAML in force
    connections: StoredObject  # JSON as `airflow connections import` reads it
    variables: StoredObject  # JSON as `airflow variables import` reads it
    connection_ids: list[str] = field(default_factory=list)
    variable_keys: list[str] = field(default_factory=list)
    tables: list[ConfigTable] = field(default_factory=list)
    tables_conn_id: str | None = None
    missing: list[str] = field(default_factory=list)  # connections/variables named but not defined

    def objects(self) -> list[StoredObject]:
        return [self.policy, self.connections, self.variables, *(t.object for t in self.tables)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfigurationsSection:
        d = dict(d)
        for k in ("policy", "connections", "variables"):
            d[k] = StoredObject(**d[k])
        d["tables"] = [ConfigTable(**{**t, "object": StoredObject(**t["object"])}) for t in d.get("tables", [])]
        return cls(**d)


@dataclass
class RestoreScope:
    """A ``pre_restore`` safety snapshot: the live rows a partial restore replaced, so another restore of the
    same scope can put them back. Selective: its tables. Wedding-only: ``weddings``, one object each."""

    scope: str  # wedding-only | selective
    wedding_ids: list[str] = field(default_factory=list)
    data_types: list[str] = field(default_factory=list)
    event_id: int | None = None  # the disaster_recovery_events row of the restore it undoes
    # wedding-only: one object per wedding, its tables as sections (the wedding backup's object format)
    weddings: list[WeddingEntry] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RestoreScope:
        return cls(**{**d, "weddings": [WeddingEntry.from_dict(w) for w in d.get("weddings", [])]})


@dataclass
class FilesSection:
    """The files component (photos, documents) at this backup's point (wedsync_backup/files).

    ``state`` is an encrypted JSON-lines object of this backup listing the file state (path -> content hash,
    size); the contents live once in the shared content store (``files/content/``). ``delta_of``: the
    capture this state is a delta against (an incremental), None when it lists the whole state. ``scope``:
    None for the whole file state; ``{"wedding_ids": [...]}`` when the state lists only those weddings' files
    (a wedding backup): such a capture serves those weddings' restores, never a whole restore nor a delta base.
    """

    state: StoredObject
    captured_at: str  # ISO 8601 UTC: when the bucket was read
    objects: int  # files in the state at this point
    bytes: int
    new_objects: int  # contents uploaded by this backup (the rest were already in the repository)
    new_bytes: int
    delta_of: str | None = None
    changed: int = 0  # a delta: paths added, changed or removed
    problems: list[str] = field(default_factory=list)  # missing or corrupt source objects (kept as before)
    scope: dict[str, Any] | None = None  # None: the whole file state (manifests before the field read so)

    @property
    def whole(self) -> bool:
        return self.scope is None

    def covers(self, wedding_ids: list[str] | None) -> bool:
        """Whether this state holds every file of ``wedding_ids`` (None: every file, only a whole state does)."""
        if self.scope is None:
            return True
        return wedding_ids is not None and {str(w) for w in wedding_ids} <= set(self.scope.get("wedding_ids", []))


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
    chain: ChainSection | None = None
    provenance: Provenance | None = None
    weddings: WeddingsSection | None = None  # wedding backups: one bundle per batch of weddings
    configurations: ConfigurationsSection | None = None
    restore_scope: RestoreScope | None = None  # pre_restore snapshots only
    files: FilesSection | None = None
    # Per-tier capture details (an incremental's LSN range, counts, sequences). Manifests written before the
    # typed sections also kept their provenance and chain here; ``provenance_info``/``chain_info`` read both.
    extra: dict[str, Any] = field(default_factory=dict)
    mac: str | None = None

    # --- derived -----------------------------------------------------------------------------
    @property
    def schema_object(self) -> StoredObject:
        return StoredObject(**self.schema["object"])

    @property
    def changes_object(self) -> StoredObject | None:
        return StoredObject(**self.changes["object"]) if self.changes else None

    def pieces(self) -> dict[str, list[tuple[int, StoredObject]]]:
        """The bundles among ``objects()``: key -> its pieces (offset, piece); verified piece by piece."""
        return self.weddings.pieces() if self.weddings is not None else {}

    def objects(self) -> list[StoredObject]:
        """Every stored object of the backup except the manifest itself."""
        out = [self.schema_object] if self.schema.get("object") else []
        out += [p for t in self.tables for p in t.parts]
        if self.changes_object:
            out.append(self.changes_object)
        if self.extra.get("large_objects"):  # full backups: the large objects' contents (large_objects.py)
            out.append(StoredObject(**self.extra["large_objects"]["object"]))
        if self.weddings is not None:
            out += self.weddings.objects()
        if self.configurations is not None:
            out += self.configurations.objects()
        if self.restore_scope is not None:
            out += [w.object for w in self.restore_scope.weddings]
        if self.files is not None:  # the file state; the contents are shared and verified when stored
            out.append(self.files.state)
        return out

    @property
    def components(self) -> list[str]:
        """What the backup holds, as the catalog's ``components_backed_up`` lists it."""
        return [
            "database",
            *(["files"] if self.files is not None else []),
            *(["configurations"] if self.configurations is not None else []),
        ]

    @property
    def point(self) -> ConsistentPoint:
        return ConsistentPoint.from_dict(self.consistent_point)

    @property
    def chain_info(self) -> ChainSection | None:
        """The typed chain section; for an incremental, or a manifest written before it, built from ``extra``."""
        if self.chain is not None:
            return self.chain
        x = self.extra
        if self.backup_type == "incremental":
            return ChainSection(
                method=x.get("method", "logical"),
                slot=self.consistent_point.get("slot"),
                backup_ids=list(x.get("chain") or []),
                start_lsn=x.get("start_lsn"),
                end_lsn=x.get("end_lsn"),
                closes_chain=bool(x.get("closes_chain", False)),
                captures_deletes=bool(x.get("captures_deletes", True)),
            )
        if "chain" in x or "schema_fingerprint" in x:
            return ChainSection(
                method=x.get("chain") or ("logical" if self.consistent_point.get("slot") else "none"),
                slot=self.consistent_point.get("slot"),
                schema_fingerprint=x.get("schema_fingerprint"),
                schema_objects=x.get("schema_objects"),
                replica_identity_full_set=list(x.get("replica_identity_full_set") or []),
                earlier_fingerprints=dict(x.get("earlier_fingerprints") or {}),
            )
        return None

    @property
    def provenance_info(self) -> Provenance:
        """The typed provenance; a manifest written before it had only the run in ``extra``."""
        if self.provenance is not None:
            return self.provenance
        x = self.extra
        warnings = list(x.get("warnings") or [])
        if x.get("warning") and x["warning"] not in warnings:
            warnings.append(x["warning"])
        return Provenance(
            created_by=x.get("created_by") or (f"airflow:{x['dag_id']}" if x.get("dag_id") else "unknown"),
            dag_id=x.get("dag_id"),
            run_id=x.get("run_id"),
            reason=x.get("reason"),
            rule_321=x.get("rule_321"),
            warnings=warnings,
        )

    @property
    def total_rows(self) -> int:
        weddings = sum(w.rows for w in self.weddings.weddings) if self.weddings else 0
        weddings += sum(w.rows for w in self.restore_scope.weddings) if self.restore_scope else 0
        return sum(t.row_count for t in self.tables) + weddings

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
        if d.get("chain") is not None:
            d["chain"] = ChainSection(**d["chain"])
        if d.get("provenance") is not None:
            d["provenance"] = Provenance(**d["provenance"])
        if d.get("weddings") is not None:
            d["weddings"] = WeddingsSection.from_dict(d["weddings"])
        if d.get("configurations") is not None:
            d["configurations"] = ConfigurationsSection.from_dict(d["configurations"])
        if d.get("restore_scope") is not None:
            d["restore_scope"] = RestoreScope.from_dict(d["restore_scope"])
        if d.get("files") is not None:
            d["files"] = FilesSection(**{**d["files"], "state": StoredObject(**d["files"]["state"])})
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
