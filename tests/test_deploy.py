"""deploy/ for operators: the Prometheus config, rules and their unit tests, the Kubernetes manifests, the
compose file, the Grafana dashboard and the Dockerfile, checked with the real tools.

promtool checks the configurations and rules and runs the rule unit tests (and is shown to fail on a wrong
expectation); kubernetes-validate checks every manifest against the Kubernetes API schemas offline; the
compose file, the dashboard and the Dockerfile are parsed and their structure checked; the dashboard's
PromQL is parsed by promtool. Every metric name the rules and the dashboard use must be either one a real
``refwatch crawl --metrics-port`` serves (or writes with ``--metrics-textfile``) or one of the
worker-only names below. Nothing here needs Docker or a cluster.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from crawler.hashing.digest import hash_bytes
from crawler.outcomes import Outcome
from crawler.sample.web import SampleWeb
from crawler.settings import REFWATCH_QUEUE_CLOSE_TIMEOUT
from tests.helpers import REPO_ROOT, free_port

DEPLOY = REPO_ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "refwatch.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "tests" / "refwatch.rules.test.yml"
COMPOSE = DEPLOY / "compose.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "refwatch.json"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.30"
METRICS_PORT = 9410

# Exported by `refwatch worker` only (crawler/workers/metrics.py): no single crawl serves them.
# tests/test_ops.py checks that two running workers export every one of them.
WORKER_ONLY_METRICS = frozenset({
    "refwatch_shards",  # gauge {run_id, state: planned|pending|in_flight|committed|dead}
    "refwatch_shard_references",  # gauge {run_id, state: planned|committed}
    "refwatch_shard_attempts_total",  # counter {result: committed|lost|failed|released}
    "refwatch_lease_renewals_total",
    "refwatch_leases_lost_total",
    "refwatch_shards_dead_lettered_total",
    "refwatch_worker_processes",  # gauge: child crawls allowed
    "refwatch_worker_busy_processes",  # gauge: child crawls running now
})
# The crawl's names the brief lists (served with --metrics-port, or written at the end of a run).
CRAWL_METRICS = frozenset({
    "refwatch_fetches_total", "refwatch_matches_total", "refwatch_refs_read_total", "refwatch_bad_records_total",
    "refwatch_response_bytes_total", "refwatch_events_published_total", "refwatch_queue_batches_written_total",
    "refwatch_queue_errors_total", "refwatch_inflight_requests", "refwatch_fetch_duration_seconds_bucket",
    "refwatch_hash_duration_seconds_bucket", "refwatch_politeness_waits_total",
    "refwatch_politeness_wait_seconds_total", "refwatch_backoffs_total", "refwatch_queue_unwritten_events",
})
RUN_METRICS = frozenset({
    "refwatch_run_references", "refwatch_run_duration_seconds", "refwatch_run_success", "refwatch_run_alive_ratio",
    "refwatch_run_outcome_ratio", "refwatch_run_drift", "refwatch_run_matches",
    "refwatch_run_last_success_timestamp_seconds",
})
PROMETHEUS_OWN_METRICS = frozenset({"up"})  # written by Prometheus for every target
LABEL_VALUES = {
    "outcome": {outcome.value for outcome in Outcome},
    "state": {"planned", "pending", "in_flight", "committed", "dead"},
    "result": {"committed", "lost", "failed", "released"},
}
CRD_GROUPS = ("monitoring.coreos.com/",)  # PodMonitor, ServiceMonitor, PrometheusRule: not in the core schemas
NOT_API_OBJECTS = ("kustomize.config.k8s.io/",)  # kustomization.yaml


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool not found: ./setup.sh installs Debian's prometheus package"
    return found


def run_promtool(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_all_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "record" in rule}


def rule_expressions() -> list[str]:
    return [rule["expr"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def query_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.extend(panel.get("panels", []))  # panels inside collapsed rows
        if panel["type"] not in ("row", "text"):
            found.append(panel)
    return found


def grafana_to_promql(expr: str) -> str:
    """The expression Prometheus receives: Grafana's variables replaced by typical values."""
    for variable, value in (("$__rate_interval", "1m"), ("$__interval", "15s"), ("$__range", "6h"),
                            ("$run_id", ".*"), ("${run_id}", ".*")):
        expr = expr.replace(variable, value)
    return expr


def dashboard_expressions() -> list[str]:
    return [grafana_to_promql(target["expr"]) for panel in query_panels(dashboard()) for target in panel["targets"]]


# ---------------------------------------------------------------------------------------------- PromQL names

_FUNCTION_OR_KEYWORD = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                        "offset", "bool", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names (and recorded series names) a PromQL expression selects.

    Strings, label matchers, grouping clauses, ranges and offsets are blanked first; what remains of each
    identifier not followed by "(" (a function call) and not a keyword is a selector's name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", "[]", text)
    text = re.sub(r"\boffset\s+-?\d+[smhdwy]", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        following = text[match.end():].lstrip()
        if following.startswith("(") or name.lower() in _FUNCTION_OR_KEYWORD:
            continue
        if re.fullmatch(r"\d*[smhdwy]", name):  # a duration left over
            continue
        names.add(name)
    return names


def label_values(expr: str) -> list[tuple[str, str]]:
    """(label, value) for every literal value a matcher compares a known label to (regex alternatives split)."""
    found = []
    for label, _, value in re.findall(r'\b(outcome|state|result)\s*(=~|!~|!=|=)\s*"([^"]*)"', expr):
        found.extend((label, word) for word in value.split("|"))
    return found


def base_name(sample_name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", sample_name)


def unknown_names(used: set[str], served: set[str]) -> set[str]:
    known = served | WORKER_ONLY_METRICS | PROMETHEUS_OWN_METRICS | recorded_names()
    known_bases = {base_name(name) for name in known}
    return {name for name in used if name not in known and base_name(name) not in known_bases}


def test_name_extraction_sees_every_selector_and_nothing_else() -> None:
    expr = ('sum by (job, outcome) (rate(refwatch_fetches_total{outcome=~"timeout|dns_error"}[5m] offset 1h))'
            ' / ignoring (outcome) group_left job:refwatch_fetches:rate5m and on () vector(1) > bool 0'
            ' unless refwatch_bogus_metric or histogram_quantile(0.9, sum by (le) (rate(x_bucket[1m])))')
    assert metric_names(expr) == {"refwatch_fetches_total", "job:refwatch_fetches:rate5m", "refwatch_bogus_metric",
                                  "x_bucket"}
    assert unknown_names(metric_names(expr), set(CRAWL_METRICS)) == {"refwatch_bogus_metric", "x_bucket"}
    assert label_values(expr) == [("outcome", "timeout"), ("outcome", "dns_error")]


# ---------------------------------------------------------------------------------------------- a real crawl


@dataclass
class CrawlMetrics:
    served: set[str]  # sample names of /metrics while the crawl ran, plus the end-of-run text file's
    families: dict[str, str]  # family name -> type
    healthy_while_running: subprocess.CompletedProcess[str]
    healthy_after_exit: subprocess.CompletedProcess[str]


def healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py"), str(port)], capture_output=True,
                          text=True, timeout=30)


def sample_names(text: str, families: dict[str, str]) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":  # a family without samples still has its name
            names.add(f"{family.name}_total")
        elif family.type in ("gauge", "unknown"):
            names.add(family.name)
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


@pytest.fixture(scope="module")
def crawl(web: SampleWeb, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrawlMetrics]:
    """A small real crawl with --metrics-port and --metrics-textfile; /metrics scraped while it runs."""
    base = tmp_path_factory.mktemp("deploy-crawl")
    snapshot = base / "snapshot.csv"
    with snapshot.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "URL"])
        writer.writerows([("ok", web.url("/img/1.jpg")), ("missing", web.url("/status/404")),
                          ("slow", web.url("/img/2.jpg").replace("/img/2.jpg", "/slow/3"))])
    hashlist = base / "known.csv"
    hashlist.write_text(f"algorithm,hash,id,label\nmd5,{hash_bytes(web.image_bytes(1)).md5},k-1,synthetic\n",
                        encoding="utf-8")
    port, textfile, log = free_port(), base / "run.prom", base / "crawl.log"
    args = [sys.executable, "-m", "crawler.cli.main", "crawl", str(snapshot), "--hashlist", f"known={hashlist}",
            "--out", str(base / "out"), "--run-id", "deploy", "--allow-private-networks", "--timeout", "10",
            "--retries", "0", "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
            "--metrics-textfile", str(textfile), "--no-progress", "--json"]
    families: dict[str, str] = {}
    served: set[str] = set()
    healthy_while_running = None
    with log.open("w") as log_file:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 90
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                    served |= sample_names(answer.read().decode(), families)
            except OSError:
                time.sleep(0.2)
                continue
            if healthy_while_running is None:
                healthy_while_running = healthcheck(port)
            time.sleep(0.3)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert healthy_while_running is not None, "the crawl's /metrics never answered"
    served |= sample_names(textfile.read_text(encoding="utf-8"), families)
    yield CrawlMetrics(served, families, healthy_while_running, healthcheck(port))


def test_a_crawl_serves_every_crawl_metric_the_deployment_relies_on(crawl: CrawlMetrics) -> None:
    assert CRAWL_METRICS <= crawl.served, CRAWL_METRICS - crawl.served
    assert RUN_METRICS <= crawl.served, RUN_METRICS - crawl.served
    # the worker-only names really are the worker's: a crawl alone does not serve them
    assert not WORKER_ONLY_METRICS & crawl.served


def test_rules_use_only_known_metric_names_and_label_values(crawl: CrawlMetrics) -> None:
    used = set().union(*(metric_names(expr) for expr in rule_expressions()))
    assert not unknown_names(used, crawl.served), unknown_names(used, crawl.served)
    assert {"refwatch_fetches_total", "refwatch_shards", "up"} <= used
    for expr in rule_expressions():
        for label, value in label_values(expr):
            assert value in LABEL_VALUES[label], f"{label}={value!r} in {expr}"


def test_dashboard_uses_only_known_metric_names_and_label_values(crawl: CrawlMetrics) -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    assert not unknown_names(used, crawl.served), unknown_names(used, crawl.served)
    for expr in dashboard_expressions():
        for label, value in label_values(expr):
            assert value in LABEL_VALUES[label], f"{label}={value!r} in {expr}"


def test_healthcheck_passes_on_live_metrics_and_fails_when_they_are_gone(crawl: CrawlMetrics) -> None:
    assert crawl.healthy_while_running.returncode == 0, crawl.healthy_while_running.stderr
    assert crawl.healthy_after_exit.returncode == 1
    assert crawl.healthy_after_exit.stderr.startswith("unhealthy: ")


# ---------------------------------------------------------------------------------------------- Prometheus


def test_compose_prometheus_config_passes_promtool_with_its_rules() -> None:
    checked = run_promtool("check", "config", "prometheus.yml", cwd=DEPLOY / "prometheus")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "refwatch.rules.yml" in checked.stdout + checked.stderr  # the rule glob found the rules


def test_compose_prometheus_scrapes_every_worker_replica_through_docker_dns() -> None:
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    dns = jobs["refwatch-worker"]["dns_sd_configs"][0]
    assert dns["names"] == ["worker"] and dns["type"] == "A" and dns["port"] == METRICS_PORT
    assert jobs["pushgateway"]["honor_labels"] is True


def test_kubernetes_prometheus_config_passes_promtool_laid_out_as_mounted(tmp_path: Path) -> None:
    config = load_yaml(K8S / "monitoring" / "prometheus.yml")
    roles = {job["job_name"]: [sd["role"] for sd in job["kubernetes_sd_configs"]] for job in config["scrape_configs"]}
    assert roles == {"refwatch-worker": ["pod"], "pushgateway": ["endpoints"]}
    (tmp_path / "rules").mkdir()
    shutil.copy(RULES, tmp_path / "rules" / RULES.name)
    shutil.copy(K8S / "monitoring" / "prometheus.yml", tmp_path / "prometheus.yml")
    checked = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    if "field kubernetes_sd_configs not found" in checked.stdout + checked.stderr:
        # Debian builds promtool without Kubernetes discovery: check the rest (relabelling, rules) with the
        # discovery swapped for an empty static list.
        for job in config["scrape_configs"]:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": []}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
        checked = run_promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "refwatch.rules.yml" in checked.stdout + checked.stderr


def test_rules_pass_promtool_check() -> None:
    checked = run_promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_rule_unit_tests_pass() -> None:
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def _copy_rules_and_tests(tmp_path: Path, keep_test: str) -> tuple[Path, Path]:
    """The rules and one unit test of them, in a temporary copy laid out like deploy/prometheus/."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    rules = tmp_path / "rules" / RULES.name
    shutil.copy(RULES, rules)
    suite = load_yaml(RULE_TESTS)
    suite["tests"] = [test for test in suite["tests"] if test["name"] == keep_test]
    assert len(suite["tests"]) == 1, keep_test
    tests = tmp_path / "tests" / RULE_TESTS.name
    tests.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return rules, tests


SPIKE_TEST = "network error spike - timeouts jump from 1 in 11 to 9 in 10 fetches"


def test_rule_unit_tests_fail_on_a_wrong_expectation(tmp_path: Path) -> None:
    _, tests = _copy_rules_and_tests(tmp_path, SPIKE_TEST)
    assert run_promtool("test", "rules", str(tests)).returncode == 0  # the copy passes as it is
    tests.write_text(tests.read_text().replace("severity: warning", "severity: critical"), encoding="utf-8")
    failed = run_promtool("test", "rules", str(tests))
    assert failed.returncode != 0
    assert "FAILED" in failed.stdout + failed.stderr


def test_rule_unit_tests_fail_when_an_alert_is_weakened(tmp_path: Path) -> None:
    rules, tests = _copy_rules_and_tests(tmp_path, SPIKE_TEST)
    text = rules.read_text()
    assert "and job:refwatch_fetch_network_errors:ratio_rate10m > 0.2" in text
    rules.write_text(text.replace("and job:refwatch_fetch_network_errors:ratio_rate10m > 0.2",
                                  "and job:refwatch_fetch_network_errors:ratio_rate10m > 0.95"), encoding="utf-8")
    failed = run_promtool("test", "rules", str(tests))
    assert failed.returncode != 0, failed.stdout


def test_every_alert_is_actionable_and_documented() -> None:
    headings = {line.lstrip("#").strip() for line in (DEPLOY / "README.md").read_text().splitlines()
                if line.startswith("### ")}
    alerts = alert_rules()
    assert {alert["alert"] for alert in alerts} >= {
        "RefwatchNoProgress", "RefwatchNetworkErrorSpike", "RefwatchQueuePublishFailing",
        "RefwatchShardsDeadLettered", "RefwatchLeaseChurn", "RefwatchAttritionJump", "RefwatchWorkerDown"}
    for alert in alerts:
        name = alert["alert"]
        assert re.fullmatch(r"\d+[smh]", alert.get("for", "")), f"{name}: no for:"
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook_url"} <= set(alert["annotations"]), name
        assert alert["annotations"]["runbook_url"].endswith(f"deploy/README.md#{name.lower()}"), name
        assert name in headings, f"deploy/README.md has no '### {name}' section"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for test in load_yaml(RULE_TESTS)["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {alert["alert"] for alert in alert_rules()}
    assert names - firing == set(), "alerts never shown to fire"
    assert names - silent == set(), "alerts never shown to stay silent"


def test_prometheus_operator_copy_of_the_rules_is_identical() -> None:
    (crd,) = load_all_yaml(K8S / "monitoring" / "prometheusrule.yaml")
    assert crd["kind"] == "PrometheusRule"
    assert crd["spec"]["groups"] == load_yaml(RULES)["groups"], (
        "deploy/k8s/monitoring/prometheusrule.yaml differs from the rules: regenerate it (see its header)")


# ---------------------------------------------------------------------------------------------- Grafana


def test_dashboard_panels_all_query_the_datasource_variable() -> None:
    board = dashboard()
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = query_panels(board)
    assert len(panels) >= 10
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_covers_what_operators_watch() -> None:
    used = set().union(*(metric_names(expr) for expr in dashboard_expressions()))
    for needed in ("job:refwatch_fetches:rate5m", "job_outcome:refwatch_fetches:ratio_rate5m",  # throughput, mix
                   "refwatch_run_alive_ratio", "refwatch_matches_total",  # alive ratio, matches
                   "run_id_state:refwatch_shards:max", "run_id_state:refwatch_shard_references:max",  # progress
                   "refwatch_events_published_total", "refwatch_queue_errors_total",  # event queue
                   "refwatch_queue_unwritten_events",
                   "refwatch_politeness_waits_total", "refwatch_backoffs_total",  # politeness
                   "job:refwatch_fetch_network_errors:ratio_rate10m",  # errors
                   "up", "instance:refwatch_fetches:rate5m", "refwatch_worker_busy_processes"):  # per worker
        assert needed in used, needed
    assert any("deriv(" in expr for expr in dashboard_expressions()), "no ETA panel"
    per_instance = [expr for expr in dashboard_expressions() if "instance" in expr]
    assert len(per_instance) >= 4


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(dashboard_expressions())]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    checked = run_promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [
        {"record": "dashboard:bad", "expr": "sum(rate(refwatch_fetches_total[5m])"}]}]}), encoding="utf-8")
    assert run_promtool("check", "rules", str(path)).returncode != 0  # promtool does reject bad PromQL


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    services = load_yaml(COMPOSE)["services"]
    mounts = dict(volume.split(":")[:2] for volume in services["grafana"]["volumes"] if volume.startswith("./"))
    (source,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert dashboard()["templating"]["list"][0]["current"]["value"] == source["uid"]
    (provider,) = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "refwatch.yml")["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


# ---------------------------------------------------------------------------------------------- compose


def compose_variables() -> list[tuple[str, str | None]]:
    """(name, default or None) of every ${VAR...} in compose.yaml."""
    found = []
    for name, operator, default in re.findall(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}", COMPOSE.read_text()):
        found.append((name, default if operator in (":-", "-") else None))
    return found


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def resolve(text: str) -> str:
    example = env_example()
    return re.sub(r"\$\{([A-Z0-9_]+)(?::?[-?]([^}]*))?\}", lambda m: example.get(m.group(1)) or m.group(2) or "",
                  text)


def test_compose_has_every_service_with_pinned_images() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert {"redis", "minio", "createbucket", "seed", "worker", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        image = resolve(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag and tag not in ("", "latest"), f"{name}: image {image!r} is not pinned"


def test_compose_redis_keeps_its_data_and_never_evicts() -> None:
    redis = load_yaml(COMPOSE)["services"]["redis"]
    command = " ".join(str(part) for part in redis["command"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in command, flag
    assert any(str(volume).endswith(":/data") for volume in redis["volumes"])
    assert redis["image"].startswith("redis:7")


def test_compose_worker_scales_without_host_ports_and_waits_for_its_shards() -> None:
    services = load_yaml(COMPOSE)["services"]
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert str(METRICS_PORT) in [str(port) for port in worker["expose"]]
    command = [resolve(str(part)) for part in worker["command"]]
    assert command[0] == "worker"
    assert command[command.index("--metrics-port") + 1] == str(METRICS_PORT)
    assert "--redis" in command
    grace = re.fullmatch(r"(\d+)([sm])", worker["stop_grace_period"])
    assert grace and int(grace[1]) * (60 if grace[2] == "m" else 1) > REFWATCH_QUEUE_CLOSE_TIMEOUT
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    for name, service in services.items():  # host ports only on loopback
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_one_shots_and_mounted_files() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert services["seed"]["restart"] == "no" and services["seed"]["entrypoint"][:2] == ["refwatch", "seed"]
    assert services["createbucket"]["restart"] == "no"
    assert services["worker"]["depends_on"]["createbucket"]["condition"] == "service_completed_successfully"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./") and "${" not in source:
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_compose_credentials_come_only_from_the_environment() -> None:
    example = env_example()
    for name, default in compose_variables():
        assert default is not None or name in example, f"${{{name}}} has no default and is not in .env.example"
    for service_name, service in load_yaml(COMPOSE)["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", str(value)), f"{service_name}.{key} = {value!r}"
    assert "deploy/.env" in (DEPLOY / ".env.example").read_text()
    assert ".env" in (DEPLOY / ".gitignore").read_text().split()


# ---------------------------------------------------------------------------------------------- Kubernetes


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) for doc in load_all_yaml(path)]


def validate_k8s(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    validated, skipped = set(), set()
    for path, doc in k8s_documents():
        if doc["apiVersion"].startswith(NOT_API_OBJECTS + CRD_GROUPS):
            skipped.add(doc["kind"])  # kustomize's own file; operator CRDs the offline schemas do not know
            continue
        try:
            validate_k8s(doc)
        except Exception as exc:  # kubernetes_validate's ValidationError and SchemaNotFoundError
            pytest.fail(f"{path.relative_to(REPO_ROOT)}: {doc['kind']}: {getattr(exc, 'message', exc)}")
        validated.add(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "Job", "ConfigMap", "PersistentVolumeClaim"} <= validated
    assert skipped <= {"Kustomization", "PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_the_schema_validation_rejects_a_broken_manifest() -> None:
    import kubernetes_validate

    (deployment,) = [doc for _, doc in k8s_documents() if doc["kind"] == "Deployment"
                     and doc["metadata"]["name"] == "refwatch-worker"]
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken)
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken)


def test_kustomization_lists_every_manifest_but_the_seed_job() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"seed-job.yaml"}
    monitoring = load_yaml(K8S / "monitoring" / "kustomization.yaml")
    assert {(K8S / "monitoring" / name).exists() for name in monitoring["resources"]} == {True}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_kustomize_build_renders_valid_manifests() -> None:
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    for doc in docs:
        validate_k8s(doc)
        assert doc["metadata"].get("namespace", "refwatch") == "refwatch" or doc["kind"] == "Namespace"
    assert {doc["kind"] for doc in docs} >= {"Deployment", "StatefulSet", "Service", "ConfigMap"}


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in k8s_documents() if doc["kind"] == kind
              and (doc["metadata"].get("name") or doc["metadata"].get("generateName")) == name]
    return doc


def test_kubernetes_worker_is_probed_on_its_metrics_port_and_given_time_to_stop() -> None:
    worker = _one("Deployment", "refwatch-worker")
    pod = worker["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["metrics"] == METRICS_PORT
    assert container["args"][container["args"].index("--metrics-port") + 1] == str(METRICS_PORT)
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", METRICS_PORT), probe
    assert spec["terminationGracePeriodSeconds"] > REFWATCH_QUEUE_CLOSE_TIMEOUT
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert {"name": "refwatch-s3", "optional": True} in [source.get("secretRef") for source in container["envFrom"]]
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_kubernetes_redis_keeps_its_data_and_never_evicts() -> None:
    redis = _one("StatefulSet", "redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = " ".join(container["args"])
    for flag in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert flag in args, flag
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert _one("Service", "redis")["spec"]["ports"][0]["port"] == 6379


def test_kubernetes_seed_job_runs_once() -> None:
    job = _one("Job", "refwatch-seed-")
    assert job["spec"]["backoffLimit"] == 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "seed" and "--redis" in container["args"]


# ---------------------------------------------------------------------------------------------- the image


def dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into stages."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_final_stage() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    final = dockerfile_stages()[-1]
    assert final[0] == "FROM ${PYTHON_IMAGE}"
    joined = "\n".join(final)
    assert not re.search(r"apt-get install|build-essential|gcc|g\+\+", joined), "build tools in the final image"
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["refwatch"]' in final
    assert 'CMD ["worker", "--help"]' in final
    assert f"EXPOSE {METRICS_PORT}" in final
    (health,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert "curl" not in health and "wget" not in health and "refwatch-healthcheck" in health
    assert "refwatch = " in (REPO_ROOT / "pyproject.toml").read_text()  # the entry point exists


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if pattern.startswith("**/"):
            candidates += [part for part in parts]
            pattern = pattern[3:]
        if any(fnmatch(candidate, pattern) for candidate in candidates):
            ignored = not negate
    return ignored


def test_build_context_holds_the_package_and_nothing_else(tmp_path: Path) -> None:
    """The files .dockerignore lets through build the refwatch wheel; tests, bench, docs and .git stay out."""
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    context = [path for path in tracked if not dockerignored(path, patterns)]
    for path in context:
        assert not path.startswith(("tests/", "bench/", "docs/", ".git/", ".ci/")), path
    for line in dockerfile_stages()[0] + dockerfile_stages()[-1]:  # every COPY source is in the context
        if line.startswith("COPY ") and "--from" not in line:
            for source in [part for part in line.split()[1:-1] if not part.startswith("--")]:
                assert any(path == source or path.startswith(source.rstrip("/") + "/") for path in context), source
    for path in context:
        (tmp_path / "context" / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / path, tmp_path / "context" / path)
    # setuptools' build_py lays out what the wheel would hold (packages and package data, from pyproject.toml)
    # without the network or the wheel package
    built = subprocess.run([sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
                            "--build-lib", str(tmp_path / "lib")], cwd=tmp_path / "context", capture_output=True,
                           text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    names = {path.relative_to(tmp_path / "lib").as_posix() for path in (tmp_path / "lib").rglob("*") if path.is_file()}
    assert {"crawler/cli/main.py", "crawler/data/placeholders.csv", "spiders/replay.py",
            "middlewares/hashing.py"} <= names
    assert not any(name.startswith("tests/") for name in names)
