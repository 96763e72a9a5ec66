"""Credentials never leave the process that uses them: a distributed run with AWS keys in the environment and a
Redis password in its URL, searched everywhere it writes — S3 outputs and events, the staging folder, the
logs and printed results of seed, worker and status, a worker's /metrics, and Redis itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from crawler.hashing.digest import hash_bytes
from tests.helpers import REPO_ROOT, free_port
from tests.redisserver import RedisServer
from tests.test_distributed import _snapshot

ACCESS_KEY = "AKIAREFWATCHSECRET01"
SECRET_KEY = "refwatch-secret-access-key-do-not-print"
REDIS_PASSWORD = "refwatch-redis-password-do-not-print"
SECRETS = (ACCESS_KEY, SECRET_KEY, REDIS_PASSWORD)

pytestmark = pytest.mark.timeout(300)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crawler.cli.main", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def test_credentials_appear_in_no_output(s3_server, web, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", password=REDIS_PASSWORD).start()
    try:
        bucket = "secrets-audit"
        s3_server.client().create_bucket(Bucket=bucket)
        snapshot = _snapshot(web, tmp_path / "snap.parquet", 16)
        hashlist = tmp_path / "known.csv"
        hashlist.write_text(f"algorithm,hash,id,label\nmd5,{hash_bytes(web.image_bytes(1)).md5},e1,synthetic\n",
                            encoding="utf-8")
        staging = tmp_path / "staging"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        common = ["--out", f"s3://{bucket}/out", "--queue", f"s3://{bucket}/queue", "--s3-endpoint-url",
                  s3_server.endpoint, "-s", f"REFWATCH_STAGING_DIR={staging}"]
        texts: list[str] = []
        seeded = _run(["seed", str(snapshot), "--redis", redis.url, "--run-id", "secret", "--shard-size", "8",
                       "--hashlist", f"known={hashlist}", "--allow-private-networks", "--json", *common], env)
        assert seeded.returncode == 0, seeded.stderr[-2000:]
        texts += [seeded.stdout, seeded.stderr]
        port = free_port()
        log = tmp_path / "worker.log"  # a file, not a pipe: a DEBUG log would fill a pipe nobody reads yet
        with log.open("w") as log_file:
            worker = subprocess.Popen([sys.executable, "-m", "crawler.cli.main", "worker", "--redis", redis.url,
                                       "--processes", "2", "--lease", "5", "--exit-when-idle", "--metrics-port",
                                       str(port), "--metrics-address", "127.0.0.1", "--log-level", "DEBUG"],
                                      cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        scrapes = []
        deadline = time.monotonic() + 200
        while worker.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                    scrapes.append(response.read().decode())
            except OSError:
                pass
            time.sleep(0.5)
        worker.wait(timeout=60)
        worker_log = log.read_text()
        assert worker.returncode == 0, worker_log[-3000:]
        assert "run secret finished" in worker_log
        assert scrapes, "the worker's /metrics were never scraped"
        texts += [worker_log, *scrapes]
        bad_redis = redis.url.replace(REDIS_PASSWORD, REDIS_PASSWORD[:-1] + "X")
        for args in (["status", "--redis", redis.url, "--run-id", "secret", "--json"],
                     ["status", "--redis", bad_redis]):  # a wrong password: the error names the URL, masked
            result = _run(args, env)
            texts += [result.stdout, result.stderr]
        status = json.loads(texts[-4])
        assert status["state"] == "finished" and status["references"]["done"] == 16
        assert "***" in texts[-1]
        client = s3_server.client()
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert any("/queue/" in f"/{k}" for k in keys) and any(k.endswith("summary.json") for k in keys)
        blobs = [client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
        blobs += [p.read_bytes() for p in staging.rglob("*") if p.is_file()]
        import redis as redis_client

        r = redis_client.Redis.from_url(redis.url)
        for key in r.keys("*"):
            kind = r.type(key)
            if kind == b"string":
                blobs.append(r.get(key) or b"")
            elif kind == b"hash":
                blobs += [b"%s=%s" % item for item in r.hgetall(key).items()]
            elif kind == b"stream":
                blobs += [repr(r.xrange(key)).encode()]
        assert len(blobs) >= 8  # outputs, events, staging copies, Redis keys
        for secret in SECRETS:
            assert not any(secret in text for text in texts), f"{secret[:6]}… printed"
            assert not any(secret.encode() in blob for blob in blobs), f"{secret[:6]}… stored"
    finally:
        redis.stop()
