"""Run one replay crawl in this process and return its summary.

The CLI and the demo both come through here: they translate their options into settings, and this module
checks the inputs first (every snapshot opened, every hash list loaded) so that bad input fails with one
line and exit code 2 before anything is fetched or written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Imported here, before the crawl's own imports and from a shallow stack, though only the download handler uses
# them: at import Scrapy's TLS modules call inspect.stack() three times (create_deprecated_class), which reads
# the source of every frame on the stack and scans sys.modules, ~0.25 s of CPU when the engine imports them
# deep inside its start-up with numba, scipy and pyarrow loaded.
import scrapy.core.downloader.contextfactory  # noqa: F401  (imports scrapy.core.downloader.tls)
from scrapy.crawler import CrawlerProcess
from scrapy.settings import Settings

from crawler.events.queue import open_queue
from crawler.matching.loading import load_hashlists
from crawler.readers import open_snapshot
from crawler.runs.context import run_context

logger = logging.getLogger(__name__)


class InputError(Exception):
    """Bad input the user must fix; the CLI prints it as one line and exits with status 2."""


@dataclass(frozen=True)
class CrawlResult:
    summary: dict[str, Any]
    run_dir: str  # local: the output folder's, or the staging copy of an s3:// output
    queue_url: str
    run_location: str = ""  # as the user named it: a folder or an s3:// URL


def project_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """refwatch's settings module with ``overrides`` on top, at the command line's priority."""
    settings = Settings()
    settings.setmodule("crawler.settings", priority="project")
    for name, value in (overrides or {}).items():
        settings.set(name, value, priority="cmdline")
    return settings


def check_inputs(settings: Settings) -> None:
    """Open every snapshot and hash list and the queue once; raise ``InputError`` with one clear line.

    The loaded lists are kept in ``REFWATCH_LOADED_HASHLISTS`` for the match pipeline, so a list is read
    (or its compiled file mapped) once per crawl, not once to check and again to match.
    """
    from crawler.events.queue import QueueError, queue_options
    from crawler.matching.hashlist import HashListError
    from crawler.references import SnapshotError
    from crawler.storage.remote import check_remote, is_remote
    from crawler.storage.base import StoreError
    from crawler.storage.factory import store_options
    hashes = check_hashes(settings.getlist("REFWATCH_HASHES"), settings.getbool("REFWATCH_PDQ_DIHEDRAL"))
    settings.set("REFWATCH_HASHES", list(hashes), priority="cmdline")
    inputs = use_s3_inputs(settings)
    try:
        for path in settings.getlist("REFWATCH_SNAPSHOTS"):
            open_snapshot(path)
        lists = load_hashlists(settings.getlist("REFWATCH_HASHLISTS"), settings.get("REFWATCH_HASHLIST_ALGORITHM"),
                               skip_bad_lines=settings.getbool("REFWATCH_HASHLIST_SKIP_BAD_LINES"), remote=inputs)
        settings.set("REFWATCH_LOADED_HASHLISTS", lists, priority="cmdline")
        for hashlist in lists:
            missing = [a for a in hashlist.algorithms if a not in hashes]
            if missing:
                raise InputError(f"{hashlist.path}: list {hashlist.name!r} holds {', '.join(missing)} hashes, which "
                                 f"--hashes {','.join(hashes)} does not compute (add them, or leave --hashes out)")
        out = settings.get("REFWATCH_OUT")
        if is_remote(out):  # a wrong bucket, endpoint or credentials: bad input, before anything is fetched
            check_remote(out, store_options(settings))
        queue_url = settings.get("REFWATCH_QUEUE")
        if queue_url and lists:  # without lists nothing is ever published
            queue = open_queue(queue_url, **queue_options(settings))
            queue.check()
            queue.close()
    except (SnapshotError, HashListError, QueueError, StoreError) as exc:
        raise InputError(str(exc)) from exc


def use_s3_inputs(settings: Settings) -> Any:
    """This process's access to ``s3://`` snapshots and hash lists (endpoint, input cache). The spider opens
    snapshots by name, so the readers get it as the process's default (``crawler/readers/remote.py``)."""
    from crawler.readers.remote import use_remote_snapshots
    from crawler.storage.inputs import inputs_from_settings

    inputs = inputs_from_settings(settings)
    use_remote_snapshots(inputs.snapshots())
    return inputs


def check_hashes(names: list[str], pdq_dihedral: bool) -> tuple[str, ...]:
    """The ``REFWATCH_HASHES`` algorithms, checked: known names, at least one, and pdq with --pdq-dihedral."""
    from crawler.hashing.digest import parse_algorithms

    try:
        hashes = parse_algorithms(names)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if pdq_dihedral and "pdq" not in hashes:
        raise InputError("--pdq-dihedral needs pdq among --hashes")
    return hashes


def prepare_recheck(settings: Settings) -> None:
    """Check a ``--recheck RUN``: the run exists and finished, its groups are known, and the snapshot is its
    snapshot (by checksum); with no snapshot given, replay the run's own snapshot files."""

    from crawler.runs.history import describe_snapshots, read_manifest, series_id
    from crawler.runs.recheck import RecheckError, outcome_words

    recheck = settings.get("REFWATCH_RECHECK_RUN")
    out = run_context(settings.get("REFWATCH_OUT"), recheck, None, settings)
    out.pull(f"runs/{recheck}/")
    run_dir = out.run_dir
    try:
        outcome_words(settings.getlist("REFWATCH_RECHECK_ONLY") or ["failed"])
        manifest = read_manifest(run_dir)
    except (RecheckError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    if manifest is None or manifest.status != "finished":
        raise InputError(f"{run_dir}: no finished run {recheck!r} to re-check in this output folder")
    if settings.get("REFWATCH_RUN_ID") == recheck:
        raise InputError("a re-check is a new run: give it another --run-id than the run it re-checks")
    snapshots = settings.getlist("REFWATCH_SNAPSHOTS")
    if not snapshots:
        settings.set("REFWATCH_SNAPSHOTS", [s.path for s in manifest.snapshots], priority="cmdline")
    else:
        try:
            given = series_id(describe_snapshots(snapshots))
        except OSError as exc:
            raise InputError(f"{exc.filename}: {exc.strerror}") from exc
        if given != manifest.series:
            raise InputError(f"the snapshot given is not the one run {recheck} replayed (checksums differ)")
    settings.set("REFWATCH_RECHECK_ONLY", settings.getlist("REFWATCH_RECHECK_ONLY") or ["failed"], priority="cmdline")


def run_crawl(settings: Settings) -> CrawlResult:
    """Replay the snapshots named in ``settings``; blocks until the crawl ends (one per process)."""
    use_s3_inputs(settings)  # a re-check describes its s3:// snapshots before the inputs are checked
    if settings.get("REFWATCH_RECHECK_RUN"):
        prepare_recheck(settings)
    if not settings.getlist("REFWATCH_SNAPSHOTS"):
        raise InputError("no snapshot given")
    check_inputs(settings)
    run = run_context(settings.get("REFWATCH_OUT"), settings.get("REFWATCH_RUN_ID"), settings.get("REFWATCH_QUEUE"),
                      settings)
    # Fix the run id and queue now, so that every component and the caller agree on them.
    settings.set("REFWATCH_RUN_ID", run.run_id, priority="cmdline")
    settings.set("REFWATCH_QUEUE", run.queue_url, priority="cmdline")
    run.summary_path.unlink(missing_ok=True)  # a redo's summary must be this attempt's, not the last one's
    process = CrawlerProcess(settings)  # sets up logging
    _log_binding(settings, "this crawl")
    crawler = process.create_crawler("replay")
    process.crawl(crawler)
    process.start()
    summary_path = run.summary_path
    if not summary_path.exists():
        raise RuntimeError(f"the crawl ended without writing {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    return CrawlResult(summary=summary, run_dir=str(run.run_dir), queue_url=run.queue_url,
                       run_location=run.run_location)


def _log_binding(settings: Settings, who: str) -> None:
    cpus = settings.getlist("REFWATCH_BOUND_CPUS")
    if cpus:
        logger.info("%s runs on CPU %s (crawler/workers/affinity.py)", who, ",".join(map(str, cpus)))


def run_shard(settings: Settings) -> str:
    """One shard of a sharded run (``REFWATCH_SHARD``, ``REFWATCH_SHARD_ATTEMPT``): crawl it and commit it.
    Returns ``committed``, ``lost`` (another attempt had committed it) or ``incomplete`` (stopped early)."""
    check_inputs(settings)
    process = CrawlerProcess(settings)  # sets up logging
    _log_binding(settings, f"shard {settings.getdict('REFWATCH_SHARD').get('shard_id')}")
    crawler = process.create_crawler("replay")
    process.crawl(crawler)
    process.start()
    stats = crawler.stats.get_stats() if crawler.stats else {}
    if stats.get("refwatch/shard/committed"):
        return "committed"
    return "lost" if stats.get("refwatch/shard/lost") else "incomplete"


@dataclass(frozen=True)
class ShardedRun:
    """A planned run, ready for its shards to be crawled: where it goes, its plan and manifest, and the
    settings every shard's child crawl gets (the command line's, with the run id and queue fixed)."""

    run: Any  # RunContext
    plan: Any  # crawler.shards.plan.Plan
    manifest: Any  # crawler.runs.history.Manifest
    child_settings: dict[str, Any]
    snapshots: list[str]


#: Settings a shard's child crawl does not get: the parent (or worker) shows progress and metrics.
_PARENT_ONLY = ("REFWATCH_PROGRESS", "REFWATCH_METRICS_PORT", "REFWATCH_METRICS_ADDRESS", "REFWATCH_METRICS_TEXTFILE",
                "REFWATCH_PUSHGATEWAY")


def plan_run(settings: Settings, shard_size: int, split: int = 1) -> tuple[Any, Any, list[str]]:
    """The run's outputs and its plan (cheap: Parquet footers and file names; Parquet shards in multiples of
    ``split``, see ``plan_shards``); bad snapshots are InputError."""
    from crawler.references import SnapshotError
    from crawler.shards.plan import plan_shards
    from crawler.storage.base import StoreError

    use_s3_inputs(settings)  # s3:// snapshots: footers by ranged reads
    if settings.get("REFWATCH_RECHECK_RUN"):
        prepare_recheck(settings)
    snapshots = settings.getlist("REFWATCH_SNAPSHOTS")
    if not snapshots:
        raise InputError("no snapshot given")
    run = run_context(settings.get("REFWATCH_OUT"), settings.get("REFWATCH_RUN_ID"), settings.get("REFWATCH_QUEUE"),
                      settings)
    try:
        plan = plan_shards(run.run_id, snapshots, shard_size, split)
    except (SnapshotError, StoreError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    return run, plan, snapshots


def prepare_sharded_run(settings: Settings, overrides: Mapping[str, Any], run: Any, plan: Any,
                        snapshots: list[str], *, keep_commits: bool) -> ShardedRun:
    """Check the inputs, then write the manifest (``running``) and the plan before any shard starts.

    ``keep_commits``: seeding a run again keeps what it committed (its plan must be the same); otherwise a redo
    with the same run id starts clean."""
    from crawler.runs.context import start_manifest
    from crawler.runs.history import read_manifest
    from crawler.shards.plan import PlanError, read_plan, write_plan

    check_inputs(settings)
    settings.set("REFWATCH_RUN_ID", run.run_id, priority="cmdline")
    settings.set("REFWATCH_QUEUE", run.queue_url, priority="cmdline")
    child = {key: value for key, value in overrides.items() if key not in _PARENT_ONLY}
    child |= {"REFWATCH_RUN_ID": run.run_id, "REFWATCH_QUEUE": run.queue_url, "REFWATCH_SNAPSHOTS": snapshots,
              "LOG_LEVEL": overrides.get("LOG_LEVEL") or "WARNING"}
    if keep_commits:
        if run.remote is not None:  # the store's plan and manifest, not a staging copy left by an earlier run
            for name in ("plan.json", "manifest.json"):
                (run.run_dir / name).unlink(missing_ok=True)
        run.pull(f"runs/{run.run_id}/plan.json")
        run.pull(f"runs/{run.run_id}/manifest.json")
        try:
            earlier = read_plan(run.run_dir)
        except PlanError:
            earlier = None
        manifest = read_manifest(run.run_dir)
        if earlier is not None and manifest is not None:
            if earlier.shards != plan.shards:
                raise InputError(f"run {run.run_id} was planned with other shards (snapshots or --shard-size "
                                 f"differ): seed a new run id, or the same snapshots and shard size")
            return ShardedRun(run, earlier, manifest, child, snapshots)
    else:
        _clear_earlier_attempt(run)
    if run.remote is not None:
        run.remote.pull_manifests()  # the output's runs, to find this run's series when it ends
    manifest = start_manifest(run, settings, snapshots)
    run.publish(write_plan(run.run_dir, plan))
    return ShardedRun(run, plan, manifest, child, snapshots)


def run_sharded(settings: Settings, overrides: Mapping[str, Any], processes: int,
                shard_size: int, starter: Any = None) -> CrawlResult | None:
    """Cut the run into shards and crawl them with ``processes`` child processes (``crawler.workers.local``),
    then end the run over the committed shards. ``None`` when the run is a single shard: the caller crawls it
    in this process (``run_crawl``), as a child would, without a child's start-up. ``starter``: a
    ``ShardStarter`` the caller entered already (and leaves), its zygote warming up since."""
    import contextlib

    from crawler.shards.commit import read_commits, run_store
    from crawler.shards.finish import finish_sharded_run, missing_shards
    from crawler.workers.local import ShardStarter, crawl_shards

    run, plan, snapshots = plan_run(settings, shard_size, split=processes)
    if len(plan.shards) < 2 or processes < 2:
        return None
    # The children's zygote imports the crawl stack (~2 s of CPU, on another core) while this process checks
    # the inputs (hash lists can take seconds) and writes the manifest and plan; it ends before the final pass.
    with contextlib.ExitStack() as stack:
        if starter is None:
            starter = stack.enter_context(ShardStarter(dict(os.environ)))
        else:
            stack.callback(starter.close)  # the caller's: ended here all the same, before the final pass
        sharded = prepare_sharded_run(settings, overrides, run, plan, snapshots, keep_commits=False)
        # One machine, no Redis: the per-host limit is split between the processes, so a host sees at most
        # --per-host requests at once from all of them (at least one each: with --per-host below --processes,
        # up to --processes). --concurrency stays per process: it is about this machine's CPU, not the host.
        per_host = settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")
        child_settings = {**sharded.child_settings,
                          "CONCURRENT_REQUESTS_PER_DOMAIN": max(1, per_host // processes)}
        crawl_shards(plan, child_settings, processes=processes,
                     attempts=settings.getint("REFWATCH_SHARD_ATTEMPTS"), starter=starter)
    missing = missing_shards(plan, read_commits(run_store(run), run.run_id))
    if missing:
        raise RuntimeError(f"run {run.run_id}: {len(missing)} of {len(plan.shards)} shards were not committed "
                           f"(first: {missing[0]}); redo the run with --run-id {run.run_id}")
    summary = finish_sharded_run(run, plan, sharded.manifest, settings, snapshots)
    return CrawlResult(summary=summary, run_dir=str(run.run_dir), queue_url=run.queue_url,
                       run_location=run.run_location)


def _clear_earlier_attempt(run: Any) -> None:
    """A redo (same run id) starts clean: the earlier attempt's parts, shards and summary go."""
    import shutil

    run.summary_path.unlink(missing_ok=True)
    shutil.rmtree(run.run_dir / "shards", ignore_errors=True)
    for part in sorted(run.outcomes_dir.glob("part-*.parquet")):
        part.unlink()
    if run.remote is not None:
        for info in list(run.remote.store.list(f"runs/{run.run_id}/shards/")):
            run.remote.store.delete(info.key)
