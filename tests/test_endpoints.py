"""``endpoints.json``: the one reader and writer every caller uses."""

from __future__ import annotations

import os
from pathlib import Path

from cogo.endpoints import Endpoints, read_endpoints, remove_endpoints, write_endpoints


def test_written_endpoints_read_back_private(tmp_path: Path) -> None:
    written = Endpoints(
        nats_url="nats://127.0.0.1:4222",
        http_url="http://127.0.0.1:8000",
        api_token="tok",
        nats_user="client",
        nats_password="pw",
        output_key="k",
        pid=os.getpid(),
    )
    path = write_endpoints(tmp_path, written)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_endpoints(tmp_path) == written


def test_absent_or_garbled_file_means_nothing_runs(tmp_path: Path) -> None:
    assert read_endpoints(tmp_path) is None
    (tmp_path / "endpoints.json").write_text('{"nats_url": ')
    assert read_endpoints(tmp_path) is None
    (tmp_path / "endpoints.json").write_text('{"http_url": "http://x"}')  # no bus named
    assert read_endpoints(tmp_path) is None


def test_a_workers_role_file_has_no_facade_and_unknown_keys_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "endpoints.json").write_text(
        '{"nats_url": "nats://h:4222", "role": "workers", "pid": 1, "later": true}'
    )
    endpoints = read_endpoints(tmp_path)
    assert endpoints == Endpoints(nats_url="nats://h:4222", role="workers", pid=1)
    assert endpoints is not None
    assert endpoints.http_url is None and endpoints.api_token is None


def test_only_the_writer_removes_the_file(tmp_path: Path) -> None:
    write_endpoints(tmp_path, Endpoints(nats_url="nats://h:1", pid=os.getpid() + 1))
    remove_endpoints(tmp_path)  # another process's file: a later `cogo up` keeps it
    assert read_endpoints(tmp_path) is not None
    write_endpoints(tmp_path, Endpoints(nats_url="nats://h:1", pid=os.getpid()))
    remove_endpoints(tmp_path)
    assert not (tmp_path / "endpoints.json").exists()
