#!/usr/bin/env python3
"""Container health check for ``refwatch worker``: is its /metrics answering with refwatch's metrics?

Docker's HEALTHCHECK runs it (the image has no curl). Standard library only; exits 0 when healthy, 1 with
one line on stderr when not. The port is the first argument, else ``REFWATCH_HEALTHCHECK_PORT``, else 9410.
"""

from __future__ import annotations

import os
import sys
import urllib.request

DEFAULT_PORT = 9410
TIMEOUT_SECONDS = 5.0


def check(port: int, host: str = "127.0.0.1") -> str | None:
    """None when healthy, else why not."""
    url = f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
            body = answer.read(1 << 20).decode("utf-8", "replace")
    except OSError as exc:
        return f"{url}: {exc}"
    if "refwatch_" not in body:
        return f"{url}: answers, but with no refwatch_ metric"
    return None


def main(argv: list[str]) -> int:
    port = int(argv[1] if len(argv) > 1 else os.environ.get("REFWATCH_HEALTHCHECK_PORT", DEFAULT_PORT))
    problem = check(port)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
