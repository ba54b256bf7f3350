"""A small client for the stack's Airflow REST API (v2), with the api-server's own JWT login.

Used by the launcher (trigger the first full backup, unpause the DAGs) and by tests that drive a running stack.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


@dataclass
class AirflowApi:
    base_url: str
    username: str = "admin"
    password: str = "admin"
    _token: str | None = field(default=None, repr=False)

    def _raw(self, method: str, path: str, body: Any = None, *, auth: bool = True, timeout: float = 60) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace"), f"{method} {path}") from None
        return json.loads(text) if text else None

    def token(self) -> str:
        if self._token is None:
            creds = {"username": self.username, "password": self.password}
            self._token = self._raw("POST", "/auth/token", creds, auth=False)["access_token"]
        return self._token

    def get(self, path: str) -> Any:
        return self._raw("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self._raw("POST", path, body)

    def patch(self, path: str, body: Any) -> Any:
        return self._raw("PATCH", path, body)

    def healthy(self) -> bool:
        try:
            self._raw("GET", "/api/v2/monitor/health", auth=False, timeout=3)
            return True
        except (OSError, ApiError):
            return False

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        try:
            return self.get(f"/api/v2/dags/{dag_id}")
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> dict[str, Any]:
        """The DAG as the api-server knows it, once the dag-processor has parsed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the api-server may still be busy starting
                if info := self.dag(dag_id):
                    return info
            time.sleep(1)
        raise TimeoutError(f"DAG {dag_id} did not appear within {timeout:.0f}s (see the dag-processor log)")

    def dag_runs(self, dag_id: str = "~", **query: str) -> list[dict[str, Any]]:
        qs = "&".join(f"{k}={v}" for k, v in {"limit": "100", **query}.items())
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns?{qs}")["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> dict:
        return self.post(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
        """The run once it is finished (success or failed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            except OSError:  # a busy api-server timed out: ask again
                continue
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
