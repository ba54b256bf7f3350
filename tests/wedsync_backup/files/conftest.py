"""A world with files: the commands' world (real source, catalog, three targets over the wire) plus the
platform's files bucket on the moto S3 server, reached through the ``wedsync_files`` connection, and a
``public.files`` table that describes its objects."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from wedsync_backup.commands.resources import Resources
from wedsync_backup.policy import FilesPolicy, TargetPolicy
from wedsync_backup.storage.base import Storage

from devstack.files_seed import object_for
from devstack.services import MotoServer
from tests.fixtures.storage import unique_bucket
from tests.wedsync_backup.commands.conftest import World, world  # noqa: F401

FILES_SQL = """
CREATE TABLE public.weddings (id bigint PRIMARY KEY);
INSERT INTO public.weddings SELECT generate_series(1, 3);
CREATE TABLE public.files (
    id serial PRIMARY KEY, wedding_id bigint NOT NULL REFERENCES public.weddings (id),
    storage_path text NOT NULL, size_bytes bigint NOT NULL, checksum bytea NOT NULL
);
"""


@dataclass
class FilesWorld:
    world: World
    s3: MotoServer
    bucket: str
    res: Resources

    def put(self, path: str, data: bytes, wedding_id: int = 1, *, row: bool = True) -> None:
        """An object in the files bucket and (``row``) its files row with matching size and checksum."""
        self.s3.client().put_object(Bucket=self.bucket, Key=path, Body=data)
        if row:
            self.world.write("DELETE FROM public.files WHERE storage_path = %(p)s", {"p": path})
            self.world.write(
                "INSERT INTO public.files (wedding_id, storage_path, size_bytes, checksum)"
                " VALUES (%(w)s, %(p)s, %(n)s, %(c)s)",
                {"w": wedding_id, "p": path, "n": len(data), "c": hashlib.sha256(data).digest()},
            )

    def get(self, path: str) -> bytes | None:
        try:
            return self.s3.client().get_object(Bucket=self.bucket, Key=path)["Body"].read()
        except self.s3.client().exceptions.NoSuchKey:
            return None

    def delete(self, path: str) -> None:
        self.s3.client().delete_object(Bucket=self.bucket, Key=path)

    def seed(self, n: int, start: int = 0) -> dict[str, bytes]:
        """``n`` real small photos/documents (JPEG, PNG, PDF) over three weddings."""
        out = {}
        for i in range(start, start + n):
            name = ("photos/IMG_%04d.jpg", "photos/P_%04d.png", "docs/contract-%d.pdf")[i % 3] % i
            path = f"weddings/{1 + i % 3}/{name}"
            out[path] = object_for(path)
            self.put(path, out[path], 1 + i % 3)
        return out

    def contents(self, storage_name: str) -> int:
        """Content objects on one target, counted by listing it."""
        return sum(1 for _ in self.world.storages[storage_name].list("files/content/"))

    def backup(self) -> str:
        return self.world.full_backup(self.res)


@pytest.fixture
def files_world(world: World, s3_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[FilesWorld]:  # noqa: F811
    from wedsync_airflow.targets import build_storage

    bucket = unique_bucket("files")
    s3_server.create_bucket(bucket)
    monkeypatch.setenv("AIRFLOW_CONN_WEDSYNC_FILES", s3_server.airflow_conn_json())
    world.write(FILES_SQL)
    policy = replace(world.policy, files=FilesPolicy(bucket=bucket, site="dc-primary"))
    storages = world.storages

    def open_storage(t: TargetPolicy) -> Storage:
        return storages[t.name] if t.name in storages else build_storage(t)

    res = replace(world.resources(policy), open_storage=open_storage)
    yield FilesWorld(world, s3_server, bucket, res)


def new_id() -> str:
    return uuid.uuid4().hex[:8]
