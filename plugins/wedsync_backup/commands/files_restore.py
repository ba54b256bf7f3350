"""Restoring the files component: the objects as they were at a backup's capture, into a target bucket.

``restore_files`` serves emergency_restore (components ``files``): latest, a point in time (the last
capture at or before it) or one backup. ``restore_wedding_files`` writes only the objects of given weddings
(data type ``photos`` of the wedding-only restore), for it to call when it merges a wedding back.
"""

from __future__ import annotations

from datetime import datetime

from wedsync_backup.commands.files_backup import OFF_WARNING
from wedsync_backup.commands.resources import NothingToDo, Resources
from wedsync_backup.commands.restore import RestoreRequest, with_named_point
from wedsync_backup.errors import ConfigError
from wedsync_backup.files.restore import FilesRestoreResult, write_objects
from wedsync_backup.files.state import FileEntry, files_captures, state_at
from wedsync_backup.manifest import Manifest
from wedsync_backup.policy import TargetPolicy
from wedsync_backup.repository import committed_manifests
from wedsync_backup.storage.base import Storage

COMPONENTS = ("database", "files")


def parse_components(value: object) -> tuple[str, ...]:
    """emergency_restore's ``components``: a list of database/files (default both)."""
    if value in (None, "", []):
        return COMPONENTS
    items = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    bad = [c for c in items if c not in COMPONENTS]
    if bad or not items:
        raise ConfigError(
            f"Unknown restore component(s) {bad}", fix=f"set components to a list of {', '.join(COMPONENTS)}"
        )
    return tuple(c for c in COMPONENTS if c in items)


def target_bucket(res: Resources, conn_id: str | None, bucket: str | None) -> Storage:
    """The bucket files are written back to: an aws connection and a bucket (default: the policy's)."""
    files = res.policy.files
    conn_id, bucket = _set(conn_id) or files.conn_id, _set(bucket) or files.bucket
    if not bucket:
        raise ConfigError(
            "No bucket to restore the files into",
            "the restore names no target_files_bucket and the policy sets no files.bucket",
            "set the target_files_bucket parameter",
        )
    return res.open_storage(TargetPolicy("files-restore", "s3", conn_id, "object-storage", files.site, bucket))


def choose_capture(
    manifests: list[Manifest],
    *,
    backup_id: str | None = None,
    until: datetime | None = None,
    wedding_ids: list[str] | None = None,
) -> Manifest:
    """The capture to restore: the named backup's, the last at or before ``until``, or the newest. Whole
    captures only, unless ``wedding_ids`` are given: then a wedding backup's capture that holds every one of
    their files counts too."""
    captures = files_captures(manifests, wedding_ids)
    if backup_id is not None:
        found = [m for m in captures if m.backup_id == backup_id]
        named = next((m.files for m in manifests if m.backup_id == backup_id and m.files is not None), None)
        if not found and named is not None and named.scope is not None:
            raise ConfigError(
                f"Backup {backup_id} captured only the files of weddings {_ids(named.scope['wedding_ids'])}",
                "it is a wedding backup: its capture holds those weddings' files, not "
                + (f"those of weddings {_ids(wedding_ids)}" if wedding_ids else "the whole file state"),
                "restore the files from a full or incremental backup, or restore only the weddings it holds",
            )
    elif until is not None:
        found = [m for m in captures if datetime.fromisoformat(m.files.captured_at) <= until]  # type: ignore[union-attr]
    else:
        found = captures
    if not found:
        at = f"backup {backup_id}" if backup_id else f"{until.isoformat()}" if until else "any backup"
        raise ConfigError(
            f"No completed backup captured the files for {at}",
            "the files component was off, or the backup is not on this target",
            "pick a later backup or point in time, or restore from another target",
        )
    return found[-1]


def _ids(ids: list[str], shown: int = 5) -> str:
    return ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def files_state(
    res: Resources,
    *,
    from_target: str | None = None,
    backup_id: str | None = None,
    until: datetime | None = None,
    wedding_ids: list[str] | None = None,
) -> tuple[Storage, Manifest, dict[str, FileEntry]]:
    """The chosen capture's file state (``wedding_ids``: a wedding backup's scoped capture may be chosen)."""
    repo = res.storage(from_target) if from_target else res.primary()
    manifests = committed_manifests(repo)
    chosen = choose_capture(manifests, backup_id=backup_id, until=until, wedding_ids=wedding_ids)
    return repo, chosen, state_at(repo, manifests, chosen.backup_id, res.keyring())


def restore_files(
    res: Resources,
    target: Storage,
    *,
    from_target: str | None = None,
    backup_id: str | None = None,
    until: datetime | None = None,
    wedding_ids: list[str] | None = None,
    dry_run: bool = False,
) -> dict[str, object]:
    """Write the objects of the chosen capture (only the weddings', when given) into ``target``."""
    repo, chosen, state = files_state(
        res, from_target=from_target, backup_id=backup_id, until=until, wedding_ids=wedding_ids
    )
    wanted = None if wedding_ids is None else {str(w) for w in wedding_ids}
    entries = (e for _, e in sorted(state.items()) if wanted is None or e.wedding_id in wanted)
    result: FilesRestoreResult = write_objects(entries, repo, target, res.keyring(), dry_run=dry_run)
    return {"backup_id": chosen.backup_id, "captured_at": chosen.files.captured_at, **result.as_dict()}  # type: ignore[union-attr]


def restore_wedding_files(
    res: Resources,
    wedding_ids: list[str],
    target: Storage,
    *,
    from_target: str | None = None,
    backup_id: str | None = None,
    until: datetime | None = None,
    dry_run: bool = False,
) -> dict[str, object]:
    """Data type ``photos`` of a wedding-only restore: the files rows of ``wedding_ids`` as they were at the
    chosen capture, written back to ``target`` (present ones with the right checksum skipped)."""
    return restore_files(
        res,
        target,
        from_target=from_target,
        backup_id=backup_id,
        until=until,
        wedding_ids=wedding_ids,
        dry_run=dry_run,
    )


def left_out(components: object, component: str) -> str | None:
    """Why this restore does not bring ``component`` back (components without it), or None."""
    chosen = parse_components(components)
    return None if component in chosen else f"components is {list(chosen)}: the {component} is not restored in this run"


def require_component(components: object, component: str) -> None:
    """NothingToDo (the task skips) when the restore's components leave ``component`` out."""
    why = left_out(components, component)
    if why:
        raise NothingToDo(why)


def restore_files_for(
    res: Resources,
    req: RestoreRequest,
    components: object,
    *,
    target_files_conn_id: str | None = None,
    target_files_bucket: str | None = None,
) -> dict[str, object]:
    """emergency_restore's files task: the same params as the database restore (mode, from_target, dry_run,
    confirm, reason) and the bucket to write into (default: the policy's files bucket through its connection)."""
    require_component(components, "files")
    if not res.policy.files.enabled and _set(target_files_bucket) is None:
        raise NothingToDo(f"{OFF_WARNING}: there are no files to restore")
    req = with_named_point(req, lambda: res.catalog().dsn)  # a named recovery point stands for its moment
    req.validate(res.policy)
    until = req.until()
    wedding_ids = files_in_scope(res, req)
    target = target_bucket(res, target_files_conn_id, target_files_bucket)
    return restore_files(
        res,
        target,
        from_target=req.from_target,
        backup_id=req.backup_id if req.mode == "backup_id" else None,
        until=until,
        wedding_ids=wedding_ids,
        dry_run=req.is_dry_run,
    )


def files_in_scope(res: Resources, req: RestoreRequest) -> list[str] | None:
    """Which files a restore's scope brings back: every file (complete), the weddings' own (wedding-only, when
    its data types include the files table's: ``photos``), all of them when selective names the files table;
    NothingToDo when the scope holds no files."""
    from wedsync_backup.partial.request import as_names

    table = res.policy.files.table
    if req.scope == "wedding-only":
        data_types = as_names(req.data_types)
        holding = [
            t
            for t, tables in res.policy.weddings.data_types.items()
            if _names_table([f"{schema}.{name}" if schema else name for schema, name in tables], table)
        ]
        if data_types and not set(data_types) & set(holding):
            raise NothingToDo(f"data_types {data_types} hold no files ({table}): no files are restored")
        return as_names(req.wedding_ids)
    if req.scope == "selective" and not _names_table(as_names(req.tables), table):
        raise NothingToDo(f"the tables restored do not include {table}: no files are restored")
    return None


def _names_table(names: list[str], table: str) -> bool:
    bare = table.split(".")[-1]
    return any(n in (table, bare) for n in names)


def _set(value: str | None) -> str | None:
    return None if value in (None, "", "None") else value
