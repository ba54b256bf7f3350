"""Airflow plugin: the WedSync backup console in the api-server (/wedsync-backup) and a "Backups" UI entry.

The console's code is the package ``wedsync_console`` (plugins/ is on sys.path); this file only registers it,
and stays cheap to import: every Airflow process, task runners included, loads plugins.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from wedsync_console.asgi import URL_PREFIX, LazyApp


class WedSyncConsolePlugin(AirflowPlugin):
    name = "wedsync_console"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "WedSync Backup console"}]
    external_views = [
        {
            "name": "Backups",
            "href": f"{URL_PREFIX}/",
            "url_route": "backups",
            "destination": "nav",
            "icon": f"{URL_PREFIX}/static/icon.svg",
        }
    ]
