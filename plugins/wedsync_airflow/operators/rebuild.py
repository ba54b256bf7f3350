"""Adapter for the catalog rebuild over ``wedsync_backup.commands.rebuild``."""

from __future__ import annotations

from typing import Any

from wedsync_backup.commands.rebuild import rebuild_catalog

from wedsync_airflow.operators.command import CommandOperator


class RebuildCatalogOperator(CommandOperator):
    """Rebuild the tracking tables from the manifests on ``from_target``; returns what was (not) recorded."""

    template_fields = (*CommandOperator.template_fields, "from_target")

    def __init__(self, *, from_target: str = "primary", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.from_target = from_target

    def execute(self, context: Any) -> dict[str, Any]:
        report = self.call(lambda: rebuild_catalog(self.build_resources(), self.from_target, self.run_of(context)))
        return report.as_dict()
