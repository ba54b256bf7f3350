"""Airflow's ``hostname_callable`` for the stack's Celery workers: each worker reports its own name.

Two workers on one machine would otherwise record the same hostname on their task instances; with
``WEDSYNC_WORKER_NAME`` set (the launcher sets it per worker), a task instance says which worker ran it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    name = os.environ.get("WEDSYNC_WORKER_NAME")
    fqdn = socket.getfqdn()
    return f"{name}.{fqdn}" if name else fqdn
