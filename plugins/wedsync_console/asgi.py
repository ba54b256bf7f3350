"""The console's ASGI entry point, cheap to import.

Every Airflow process loads plugins (a task runner does, for macros), but only the api-server serves the
console: the FastAPI app and its server-side imports are built on the first request, not at import.
"""

from __future__ import annotations

from typing import Any

URL_PREFIX = "/wedsync-backup"


class LazyApp:
    """An ASGI app that builds ``wedsync_console.app.create_app()`` when it is first called."""

    def __init__(self) -> None:
        self._app: Any = None

    def __repr__(self) -> str:
        return "wedsync_console.app:create_app (built on first request)"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            from wedsync_console.app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)
