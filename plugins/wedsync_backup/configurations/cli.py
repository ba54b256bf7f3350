"""``python -m wedsync_backup.configurations``: bring the configurations back without a running Airflow.

    restore --repository SPEC --key-file FILE [--backup-id ID|latest] --out DIR|-
            [--tables-dsn DSN [--apply-tables]]
    show    --repository SPEC --key-file FILE [--backup-id ID|latest]

``restore`` writes connections.json and variables.json (what ``airflow connections import`` and
``airflow variables import`` accept) and backup_policy.yaml into DIR, created 0700 with files 0600, or one
JSON document to stdout with ``--out -``. THEY CONTAIN THE CONNECTIONS' SECRETS IN PLAINTEXT. With
``--tables-dsn`` it checks the configuration tables against that database and, with ``--apply-tables``,
replaces their rows there in one transaction. ``show`` prints names and counts only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wedsync_backup.configurations.repository_spec import SPEC_HELP, open_repository
from wedsync_backup.configurations.restore import (
    SECRET_WARNING,
    as_document,
    find_configurations,
    restore_tables,
    write_files,
)
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import ConfigError, WedSyncError
from wedsync_backup.pg import target_from_conninfo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wedsync_backup.configurations", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("restore", "show"):
        s = sub.add_parser(name)
        s.add_argument("--repository", required=True, help=SPEC_HELP)
        s.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto...)")
        s.add_argument("--key-file", required=True, help="a file holding the master key (base64 of 32 bytes)")
        s.add_argument("--previous-key-file", action="append", default=[], help="an older master key (repeatable)")
        s.add_argument("--backup-id", default="latest", help="a backup id, or latest (the default)")
        if name == "restore":
            s.add_argument("--out", required=True, help="directory for the files (created 0700), or - for stdout")
            s.add_argument("--tables-dsn", help="libpq conninfo of the database the configuration tables go to")
            s.add_argument("--apply-tables", action="store_true", help="replace the tables' rows (else: check only)")
    return p


def _keyring(args: argparse.Namespace) -> Keyring:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise ConfigError(f"Cannot read the key file {path}", str(e), "name a readable file") from e

    return Keyring.from_secrets(
        read(args.key_file), [read(p) for p in args.previous_key_file], source=f"key file {args.key_file}"
    )


def run(args: argparse.Namespace) -> int:
    found = find_configurations(
        open_repository(args.repository, endpoint_url=args.endpoint_url), _keyring(args), args.backup_id
    )
    if args.command == "show":
        print(json.dumps(found.summary(), indent=2))
        return 0
    if args.out == "-":
        json.dump(as_document(found), sys.stdout, indent=2)
        sys.stdout.write("\n")
        print("WARNING: the document above holds the connections' secrets in plaintext", file=sys.stderr)
    else:
        paths = write_files(found, Path(args.out))
        backup_id = found.manifest.backup_id
        print(f"Configurations of backup {backup_id} written to {args.out} (mode 0600):", file=sys.stderr)
        print("WARNING: " + SECRET_WARNING.format(**paths), file=sys.stderr)
    if args.tables_dsn:
        target = target_from_conninfo(args.tables_dsn, "configuration tables target")
        counts = restore_tables(found, target, dry_run=not args.apply_tables)
        verb = "restored" if args.apply_tables else "checked (add --apply-tables to replace their rows)"
        print(f"Configuration tables {verb}: {json.dumps(counts)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except WedSyncError as e:
        print(f"ERROR: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
