#!/usr/bin/env bash
# One command sets refwatch up: the Debian packages the tests use, then refwatch and its Python deps.
# Run it as root (or with sudo available). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")"

# prometheus: promtool checks the /metrics exposition in the tests;
# chromium: headless Chromium renders the report's HTML page in tests/test_report.py;
# prometheus-pushgateway: tests/test_batchmetrics.py pushes end-of-run metrics to a real one on loopback;
# redis-server: the shard queue and shared politeness of many workers are tested against a real one
DEBIAN_PACKAGES=(prometheus chromium prometheus-pushgateway redis-server)

if command -v apt-get >/dev/null 2>&1; then
    missing=()
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    echo "setup.sh: no apt-get here; install these yourself for the full test suite: ${DEBIAN_PACKAGES[*]}" >&2
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
# Compile the numba hashing kernels into their on-disk cache now (~25 s of CPU), not in the first crawl.
python3 -c "from crawler.cli.crawl import warm_shard_process; warm_shard_process()"
echo "refwatch is set up: try 'refwatch demo', then 'python3 -m pytest'."
