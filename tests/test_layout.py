"""The house rules of the code layout (docs/architecture.md), checked so they stay true.

* The pure packages import nothing from Scrapy or Twisted: each is imported whole in a fresh interpreter.
* No two modules import each other, directly or around a circle, counting imports inside functions too
  (only ``if TYPE_CHECKING:`` imports are left out: they never run).
* Imports between folders run one way, down the levels the architecture page draws; a new edge that is not
  in ``ALLOWED`` fails here, so the picture and the code change together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_PACKAGES = ("crawler", "middlewares", "spiders")

#: Packages (and top-level modules) that must work without Scrapy and Twisted: plain pytest tests them.
PURE = ("crawler.hashing", "crawler.matching", "crawler.readers", "crawler.events", "crawler.storage",
        "crawler.runs", "crawler.report", "crawler.export", "crawler.sample", "crawler.references",
        "crawler.outcomes", "crawler.urls", "crawler.addresses", "crawler.domains", "crawler.shards",
        "crawler.coordination")

#: The shared vocabulary at the top of crawler/: small modules every layer may use.
VOCABULARY = {"crawler", "crawler.references", "crawler.outcomes", "crawler.urls", "crawler.addresses",
              "crawler.domains"}

#: Which groups each group may import, besides itself and the vocabulary. Levels, lowest first:
#: vocabulary; hashing, storage, readers, sample, matching; events; runs; report, export; the Scrapy layer
#: (items, pipelines, extensions, middlewares, spiders, runner, settings); the command line.
ALLOWED: dict[str, set[str]] = {
    "crawler.hashing": set(),
    "crawler.storage": set(),
    "crawler.readers": set(),
    "crawler.sample": set(),
    "crawler.matching": set(),
    "crawler.events": {"crawler.storage", "crawler.matching"},
    "crawler.runs": {"crawler.storage"},
    # a run cut into shards: the plan, attempts and commit markers, the end-of-run pass over committed shards
    "crawler.shards": {"crawler.readers", "crawler.runs", "crawler.storage"},
    # what many workers share through Redis: the shard queue, run settings, politeness
    "crawler.coordination": set(),
    "crawler.report": {"crawler.runs"},
    "crawler.export": {"crawler.runs", "crawler.readers"},
    "crawler.settings": set(),
    "crawler.items": set(),
    "crawler.logformatter": set(),
    "crawler.stats": set(),
    "crawler.download": set(),
    "middlewares": {"crawler.hashing", "crawler.coordination"},
    # the processes that crawl shards: the local --processes parent and the Redis worker
    "crawler.workers": {"crawler.coordination", "crawler.readers", "crawler.runs", "crawler.shards",
                        "crawler.storage"},
    "crawler.pipelines": {"crawler.items", "crawler.events", "crawler.matching", "crawler.runs", "crawler.shards",
                          "crawler.storage"},
    "crawler.extensions": {"crawler.items", "crawler.runs", "crawler.shards"},
    "spiders": {"crawler.hashing", "crawler.items", "crawler.readers", "crawler.runs", "crawler.shards", "middlewares"},
    "crawler.runner": {"crawler.events", "crawler.hashing", "crawler.matching", "crawler.readers", "crawler.runs",
                       "crawler.storage", "crawler.shards", "crawler.workers"},
    "crawler.cli": {"crawler.events", "crawler.export", "crawler.hashing", "crawler.matching", "crawler.readers",
                    "crawler.report", "crawler.runner", "crawler.runs", "crawler.sample", "crawler.settings",
                    "crawler.storage", "crawler.shards", "crawler.coordination", "crawler.workers"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for top in TOP_PACKAGES:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[str]:
    """Every project module ``module`` imports, at any depth, except under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names = [origin] + [f"{origin}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:  # ``import crawler.x.y`` also names its packages
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name

    def walk(nodes: list[ast.stmt]) -> Iterator[str]:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                yield from walk(node.orelse)
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield from targets(node)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    yield from walk([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)])

    yield from walk(ast.parse(path.read_text(encoding="utf-8")).body)


def _graph() -> dict[str, set[str]]:
    return {module: set(_imported(module, path)) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _group(module: str) -> str:
    if module in VOCABULARY:
        return "vocabulary"
    parts = module.split(".")
    if parts[0] != "crawler":
        return parts[0]
    return ".".join(parts[:2])


def test_the_checker_sees_a_circle_and_a_function_level_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "crawler.matching.kernels" in _graph()["crawler.matching.index"]  # imported inside a function


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_imports_between_folders_run_one_way() -> None:
    graph = _graph()
    assert set(ALLOWED) >= {_group(m) for m in MODULES} - {"vocabulary", "crawler.data"}
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if _group(target) not in ({_group(module), "vocabulary"} | ALLOWED.get(_group(module), set()))
        and _group(module) != "vocabulary"
    )
    assert wrong == []


def test_the_vocabulary_imports_no_folder() -> None:
    graph = _graph()
    assert {(m, t) for m in VOCABULARY for t in graph[m] if t not in VOCABULARY} == set()


def test_no_flat_name_prefixes_left() -> None:
    """The groups that were name prefixes in one flat folder (hashlist_*, queue_*, export_*, *store) are folders."""
    flat = [p.name for p in (ROOT / "crawler").glob("*.py")]
    assert [n for n in flat if n.startswith(("hashlist", "queue_", "export", "hash")) or n.endswith("store.py")] == []


@pytest.mark.parametrize("package", PURE)
def test_pure_packages_import_no_scrapy_or_twisted(package: str) -> None:
    modules = sorted(m for m in MODULES if m == package or m.startswith(package + "."))
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('scrapy', 'twisted'))\n"
        "print(len(bad), bad[:5])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 []", f"{package} pulls in {done.stdout.strip()}"
    assert modules, package


def test_a_crawl_without_redis_loads_neither_redis_nor_the_cookies_middleware(tmp_path: Path) -> None:
    """Start-up is paid by every crawl process: Redis's client (~0.12 s) is imported only when a Redis URL is
    given, and Scrapy's cookies middleware (off: COOKIES_ENABLED) not at all (~0.06 s, tldextract)."""
    snapshot = tmp_path / "s.csv"
    snapshot.write_text("id,URL\nr0,not a url\n")
    code = (
        "import sys\n"
        "from crawler.cli.main import main\n"
        f"status = main(['crawl', {str(snapshot)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'redis'\n"
        "                or m in ('scrapy.downloadermiddlewares.cookies', 'tldextract'))\n"
        "print(status, loaded)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "0 []"
