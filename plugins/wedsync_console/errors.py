"""Errors of console requests, each carrying the HTTP answer a caller can act on."""

from __future__ import annotations


class ConsoleError(Exception):
    status_code = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"detail": self.message}


class FieldErrors(ConsoleError):
    """Bad input: one message per field; nothing was triggered."""

    status_code = 422

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields

    def body(self) -> dict[str, object]:
        return {"detail": "invalid input: nothing was triggered", "errors": self.fields}


class NotDeployed(ConsoleError):
    status_code = 422

    def __init__(self, dag_id: str) -> None:
        super().__init__(
            f"DAG {dag_id} is not deployed on this Airflow (or has import errors): check the DAGs folder "
            "and the DAG processor's log"
        )
        self.dag_id = dag_id


class Forbidden(ConsoleError):
    status_code = 403


class Unauthenticated(ConsoleError):
    status_code = 401


class RateLimited(ConsoleError):
    status_code = 429
