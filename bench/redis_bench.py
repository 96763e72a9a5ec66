"""What a shard costs Redis: memory while a run is seeded, and commands over a shard's life.

Not a test: run it by hand from the repository root (redis-server must be installed: ./setup.sh).

    python bench/redis_bench.py                  # 10,000 shards, 3 renewals each
    python bench/redis_bench.py --shards 50000 --renewals 10

It starts its own redis-server on a free loopback port (AOF on, as deployed), seeds one run with ``--shards``
shard ids through ``ShardQueue.enqueue``, and reads ``INFO memory`` (used_memory) before and after; then claims,
renews ``--renewals`` times and acknowledges every shard, as a worker does, and reads ``INFO stats``
(total_commands_processed, which counts the commands inside Lua scripts too) and ``INFO commandstats``.
Printed: bytes of Redis memory per seeded shard, commands per shard over its life, and the biggest command kinds.
The server and its data folder are removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from crawler.coordination.shardqueue import ShardQueue  # noqa: E402
from tests.redisserver import RedisServer  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--renewals", type=int, default=3, help="heartbeats per shard (a shard's minutes / lease / 3)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="refwatch-redis-bench-") as folder:
        server = RedisServer(Path(folder)).start()
        try:
            queue = ShardQueue.from_url(server.url, lease_seconds=120.0)
            client = queue.client
            client.config_resetstat()
            before = int(client.info("memory")["used_memory"])
            queue.put_run("bench-run", {"settings": {"REFWATCH_OUT": "s3://bucket/out"}, "shards": args.shards})
            started = time.perf_counter()
            queue.enqueue("bench-run", [f"s{i:06d}" for i in range(args.shards)])
            seeded = time.perf_counter() - started
            after = int(client.info("memory")["used_memory"])
            seed_commands = int(client.info("stats")["total_commands_processed"])
            client.config_resetstat()
            started = time.perf_counter()
            done = 0
            while True:
                claim = queue.claim("bench-worker")
                if claim is None:
                    break
                for _ in range(args.renewals):
                    queue.renew(claim)
                queue.ack(claim)
                done += 1
            worked = time.perf_counter() - started
            commands = int(client.info("stats")["total_commands_processed"])
            stats = client.info("commandstats")
            finished_memory = int(client.info("memory")["used_memory"])
        finally:
            server.stop()
    top = sorted(((v["calls"], k.removeprefix("cmdstat_")) for k, v in stats.items()), reverse=True)[:8]
    print(f"shards                       {args.shards:,} (renewed {args.renewals} times each)")
    print(f"Redis memory per seeded shard {(after - before) / args.shards:,.0f} bytes "
          f"({(after - before) / 2**20:,.1f} MiB for the run; {(finished_memory - before) / args.shards:,.0f} "
          f"bytes per shard once all are acked)")
    print(f"seeding                      {seed_commands / args.shards:.2f} commands per shard, "
          f"{args.shards / seeded:,.0f} shards/s")
    print(f"a shard's life               {commands / max(done, 1):.1f} commands (claim, {args.renewals} renewals, ack), "
          f"{done / worked:,.0f} shards/s from one client")
    print("commands by kind (calls)     " + ", ".join(f"{name} {calls:,}" for calls, name in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
