"""Airflow plugin: emergency_restore's cross-field checks refuse a bad trigger before a DAG run exists.

Airflow validates each Param against its own JSON schema; it has no hook for checks across Params. This
api-server middleware adds them for every trigger that goes through the api-server (the UI's trigger form
and the REST API): it answers 400 with the problems, and no run is created. Other requests pass untouched.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from wedsync_airflow.restore_checks import TRIGGER_PATH, cross_field_problems

Scope = dict[str, Any]


class RestoreGuard:
    """Pure ASGI middleware: reads the trigger body, checks its conf, replays the body to the app."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"].rstrip("/") != TRIGGER_PATH:
            await self.app(scope, receive, send)
            return
        messages, body, more = [], b"", True
        while more:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        problems = _problems(body)
        if problems:
            payload = json.dumps({"detail": "emergency_restore refused: " + "; ".join(problems)}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return

        async def replay() -> Any:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _problems(body: bytes) -> list[str]:
    try:
        conf = (json.loads(body or b"{}") or {}).get("conf") or {}
    except (ValueError, AttributeError):
        return []  # not ours to judge: the API answers malformed bodies itself
    return cross_field_problems(conf) if isinstance(conf, dict) else []


class WedSyncRestoreGuardPlugin(AirflowPlugin):
    name = "wedsync_restore_guard"
    fastapi_root_middlewares = [{"middleware": RestoreGuard, "name": "emergency_restore cross-field checks"}]
