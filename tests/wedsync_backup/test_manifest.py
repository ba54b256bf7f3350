"""Typed manifest sections, and manifests written before them (with an untyped ``extra``) still read and verify.

``data/legacy-*.manifest.json`` were written by the release before the typed sections, under the test-only
master key in ``data/legacy-master-key.txt``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wedsync_backup.crypto import Keyring
from wedsync_backup.errors import IntegrityError
from wedsync_backup.manifest import ChainSection, Manifest, Provenance
from wedsync_backup.restore import verify_manifest_mac

DATA = Path(__file__).parent / "data"


def legacy(kind: str) -> tuple[bytes, Manifest, Keyring]:
    data = (DATA / f"legacy-{kind}.manifest.json").read_bytes()
    ring = Keyring.from_secrets((DATA / "legacy-master-key.txt").read_text().strip(), [], source="test")
    return data, Manifest.from_bytes(data), ring


@pytest.mark.parametrize("kind", ["full", "incremental"])
def test_old_manifests_read_verify_and_keep_their_bytes(kind: str) -> None:
    data, m, ring = legacy(kind)
    verify_manifest_mac(m, ring)  # the MAC covers the bytes as they were written
    assert m.to_bytes() == data  # commit and replication write the same bytes back
    assert m.chain is None and m.provenance is None


def test_old_manifests_have_typed_views() -> None:
    _, full, _ = legacy("full")
    assert full.point.lsn == "0/16B3748" and full.point.slot == "wedsync_0123456789abcdef"
    assert full.chain_info == ChainSection(
        "logical", "wedsync_0123456789abcdef", "f" * 64, ["public.notes"], [], None, None, False, True
    )
    p = full.provenance_info
    assert (p.dag_id, p.run_id, p.created_by) == (
        "backup_daily_full",
        "scheduled__2026-11-01T02:00:00+00:00",
        "airflow:backup_daily_full",
    )
    assert p.rule_321 is None and p.warnings == []
    _, inc, _ = legacy("incremental")
    c = inc.chain_info
    assert c is not None and c.backup_ids[-1] == inc.backup_id
    assert (c.start_lsn, c.end_lsn, c.captures_deletes) == ("0/16B3748", "0/16C0000", True)


def test_typed_sections_round_trip_under_the_mac() -> None:
    _, m, _ = legacy("full")
    ring = Keyring(os.urandom(32))
    key = ring.new_data_key(m.backup_id)
    m.encryption = key.manifest_section()
    m.extra = {}
    m.chain = ChainSection("logical", "s1", "f" * 64)
    m.provenance = Provenance(
        "airflow:backup_daily_full",
        rule_321={"compliant": False, "problems": ["2 copies, the rule needs 3"]},
        warnings=["3-2-1 rule NOT met"],
        reason="INC-42",
        retention_until="2026-12-01T02:00:00+00:00",
    )
    m._read_body = None  # type: ignore[attr-defined]  # as written by this release
    m.mac = key.mac(m.body_bytes())
    back = Manifest.from_bytes(m.to_bytes())
    verify_manifest_mac(back, ring)
    assert back.provenance == m.provenance and back.chain == m.chain
    assert back.provenance_info.warnings == ["3-2-1 rule NOT met"]
    back.provenance.warnings.append("edited")  # type: ignore[union-attr]
    with pytest.raises(IntegrityError, match="failed authentication"):
        verify_manifest_mac(back, ring)
