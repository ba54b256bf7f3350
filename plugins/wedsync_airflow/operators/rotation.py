"""The key rotation operator: re-wrap every retained backup's data key under the active master key."""

from __future__ import annotations

from typing import Any

from wedsync_backup.errors import ConfigError
from wedsync_backup.rotation import record_rotation_run, rotate_keys

from wedsync_airflow.connections import catalog, keyring
from wedsync_airflow.operators.base import WedSyncOperator, run_id_of
from wedsync_airflow.targets import build_targets


class RotateKeysOperator(WedSyncOperator):
    """Dry run (default): list what would be re-wrapped. Otherwise rotate, resumably, and record the run."""

    template_fields = (*WedSyncOperator.template_fields, "dry_run", "reason")

    def __init__(self, *, dry_run: bool | str = True, reason: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        return self.guarded(lambda: self._run(context))

    def _run(self, context: Any) -> dict[str, Any]:
        dry_run = self.dry_run not in (False, "False", "false", 0, "0")
        if not str(self.reason or "").strip() or str(self.reason) == "None":
            raise ConfigError("No reason given", fix="say why the keys are rotated (the reason parameter)")
        policy = self.policy()
        cat = catalog(policy)
        cat.migrate()
        ring = keyring(policy.encryption_conn_id)
        dag_run = context["dag_run"]
        run = {
            "active_key_id": ring.active_id,
            "dry_run": dry_run,
            "reason": str(self.reason),
            "triggered_by": str(getattr(dag_run, "triggering_user_name", None) or "unknown"),
            "dag_id": self.dag_id,
            "run_id": run_id_of(context),
        }
        record_rotation_run(cat, **run)
        try:
            result = rotate_keys(
                cat,
                {s.name: s for s in build_targets(policy)},
                ring,
                dry_run=dry_run,
                actor=f"airflow:{self.dag_id}:{run['triggered_by']}",
                reason=str(self.reason),
            ).as_dict()
        except Exception as e:
            record_rotation_run(cat, **run, error=str(e))
            raise
        record_rotation_run(cat, **run, result=result)
        if dry_run:
            self.log.info("Dry run: would re-wrap %s. Trigger with dry_run=false to rotate", result["to_rotate"])
        elif result["skipped"]:
            self.log.error("!!! Not rotated: %s. Keep the old key until these are fixed", result["skipped"])
        else:
            self.log.info(
                "Every retained backup is on %s: the old key(s) %s may be removed from %s's previous_keys",
                ring.active_id,
                sorted(set(result["old_key_ids"].values())),
                policy.encryption_conn_id,
            )
        return result
