"""Shared pytest fixtures.

Real reference files (Common Crawl WARC/WAT, Meta's PDQ images) are read in place from ``../shared/realdata``
beside the checkout (override with ``REFWATCH_REALDATA``); they are never copied into the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("REFWATCH_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of the shared real data; the tests that need it fail loudly if it is missing."""
    assert REALDATA.is_dir(), f"shared real data not found at {REALDATA}"
    return REALDATA


@pytest.fixture(scope="module")
def web():
    """The sample web on a free loopback port, stopped when the module's tests are done."""
    from crawler.sample.web import SampleWeb

    with SampleWeb() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3 endpoint (moto_server in a child process on loopback), with dummy credentials in the
    environment for boto3 clients the tests make and for child processes; stopped after the session."""
    from tests.s3server import MotoServer, s3_environment

    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    with MotoServer(log) as server, s3_environment(server.endpoint):
        yield server


@pytest.fixture()
def redis_server(tmp_path: Path):
    """A real redis-server on a free loopback port (AOF on, noeviction), its data under the test's tmp_path;
    stopped after the test. ``redis_server.kill()`` / ``.start()`` play a crash and a restart."""
    from tests.redisserver import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
