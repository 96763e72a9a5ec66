"""Component tests: refwatch's Scrapy components built with ``get_crawler`` + ``build_from_crawler``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from scrapy.http import Request, Response
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler
from twisted.internet import defer

from crawler.sample import images
from crawler.extensions.metrics import MetricsExtension
from crawler.runs.summary import build_summary
from crawler.hashing.digest import ALGORITHMS, hash_bytes
from crawler.items import OutcomeItem
from crawler.outcomes import Outcome
from crawler.references import REFERENCE_META, Reference
from middlewares.address_guard import AddressGuardMiddleware
from middlewares.hashing import BODY_SIZE_META, DIGEST_META, ImageHashMiddleware

SETTINGS = {"REFWATCH_HASH_THREADS": 1, "REFWATCH_MAX_PIXELS": 1_000_000}


def _request(url: str = "http://example.com/a.jpg") -> Request:
    return Request(url, meta={REFERENCE_META: Reference(url=url, ref_id="r1")})


def _inline_hash_middleware() -> ImageHashMiddleware:
    """The middleware with its thread hand-off run inline: no reactor needed (crawls test the real pool)."""
    return ImageHashMiddleware(max_pixels=SETTINGS["REFWATCH_MAX_PIXELS"], threads=1,
                               run_in_thread=lambda function, *args: defer.succeed(function(*args)))


def test_hash_middleware_is_built_from_settings() -> None:
    middleware = build_from_crawler(ImageHashMiddleware, get_crawler(settings_dict=SETTINGS))
    try:
        assert middleware.max_pixels == 1_000_000 and middleware.algorithms == ALGORITHMS
    finally:
        middleware.spider_closed(None)  # type: ignore[arg-type]


def test_hash_middleware_hashes_then_drops_the_body() -> None:
    middleware = _inline_hash_middleware()
    body = images.synthetic_jpeg(11)
    request = _request()
    response = Response(request.url, status=200, body=body, request=request)
    try:
        out = asyncio.run(middleware.process_response(request, response))
    finally:
        middleware.spider_closed(None)  # type: ignore[arg-type]
    assert out.body == b""
    digest = request.meta[DIGEST_META]
    assert digest.md5 == hash_bytes(body).md5 and digest.pdq == hash_bytes(body).pdq
    assert request.meta[BODY_SIZE_META] == len(body)


def test_digests_only_are_computed_without_a_thread_hand_off_up_to_a_size() -> None:
    from middlewares.hashing import INLINE_DIGEST_BYTES

    handed: list[int] = []

    def recorded(function, *args):  # noqa: ANN001, ANN202 - the pool's stand-in, counting hand-offs
        handed.append(len(args[0]))
        return defer.succeed(function(*args))

    middleware = ImageHashMiddleware(max_pixels=1_000_000, threads=1, algorithms=("md5", "sha256"),
                                     run_in_thread=recorded)
    small, big = images.synthetic_jpeg(11), b"\xff\xd8\xff" + bytes(INLINE_DIGEST_BYTES)
    for body in (small, big):
        request = _request()
        asyncio.run(middleware.process_response(request, Response(request.url, body=body, request=request)))
        digest = request.meta[DIGEST_META]
        assert digest.md5 == hash_bytes(body).md5 and digest.sha256 == hash_bytes(body).sha256
        assert digest.pdq is None and digest.sha1 is None
    assert handed == [len(big)]  # only the body over INLINE_DIGEST_BYTES went to a hashing thread
    # with a perceptual hash, always a thread: decoding must not stall the reactor
    every = ImageHashMiddleware(max_pixels=1_000_000, threads=1, run_in_thread=recorded)
    request = _request()
    asyncio.run(every.process_response(request, Response(request.url, body=small, request=request)))
    assert handed == [len(big), len(small)] and request.meta[DIGEST_META].pdq is not None


def test_hash_middleware_skips_error_pages_and_non_references() -> None:
    middleware = _inline_hash_middleware()
    try:
        request = _request()
        not_found = Response(request.url, status=404, body=b"<h1>gone</h1>", request=request)
        out = asyncio.run(middleware.process_response(request, not_found))
        assert out.body == b"" and DIGEST_META not in request.meta and request.meta[BODY_SIZE_META] == 13
        robots = Request("http://example.com/robots.txt")
        answer = Response(robots.url, status=200, body=b"User-agent: *\n", request=robots)
        assert asyncio.run(middleware.process_response(robots, answer)).body == b"User-agent: *\n"
    finally:
        middleware.spider_closed(None)  # type: ignore[arg-type]


def test_address_guard_is_on_by_default_and_can_be_lifted() -> None:
    # Always built (it also gives the DNS verdict); REFWATCH_ALLOW_PRIVATE_NETWORKS lifts only its refusals.
    guard = build_from_crawler(AddressGuardMiddleware, get_crawler(settings_dict={}))
    assert not guard.policy.permits("127.0.0.1") and guard.policy.permits("93.184.216.34")
    lifted = build_from_crawler(AddressGuardMiddleware,
                                get_crawler(settings_dict={"REFWATCH_ALLOW_PRIVATE_NETWORKS": True}))
    assert lifted.policy.permits("127.0.0.1") and lifted.policy.permits("169.254.169.254")


def test_metrics_mirror_stats_with_bounded_labels() -> None:
    crawler = get_crawler(settings_dict={"REFWATCH_METRICS_PORT": 0})
    crawler.stats.open_spider()
    ext = build_from_crawler(MetricsExtension, crawler)
    stats = crawler.stats
    stats.inc_value("refwatch/outcome/ok", 3)
    stats.inc_value("refwatch/outcome/not_found")
    stats.inc_value("refwatch/matches/known/pdq", 2)
    stats.inc_value("refwatch/refs_read", 5)
    item = OutcomeItem(run_id="r", ref_id="1", url="http://x/", outcome=Outcome.OK, fetched_at=datetime.now(UTC),
                       elapsed_ms=120.0, hash_ms=3.0)
    ext.item_scraped(item, None)  # type: ignore[arg-type]
    value = ext.registry.get_sample_value
    assert value("refwatch_fetches_total", {"outcome": "ok"}) == 3
    assert value("refwatch_fetches_total", {"outcome": "not_found"}) == 1
    assert value("refwatch_fetches_total", {"outcome": "timeout"}) == 0
    assert value("refwatch_matches_total", {"list": "known", "algorithm": "pdq", "source": "live"}) == 2
    assert value("refwatch_refs_read_total") == 5
    assert value("refwatch_fetch_duration_seconds_count") == 1
    assert value("refwatch_fetch_duration_seconds_sum") == pytest.approx(0.12)
    assert value("refwatch_hash_duration_seconds_sum") == pytest.approx(0.003)
    # A second crawler in the same process gets its own registry: no duplicate-timeseries crash.
    other = build_from_crawler(MetricsExtension, get_crawler(settings_dict={"REFWATCH_METRICS_PORT": 0}))
    assert other.registry is not ext.registry


def test_summary_is_built_from_stats() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    stats = {"start_time": started, "refwatch/outcome/ok": 8, "refwatch/outcome/gone": 2,
             "refwatch/matches/known/md5": 1, "refwatch/matched_references": 1, "refwatch/events_published": 1,
             "finish_reason": "finished"}
    summary = build_summary(stats, run_id="r", snapshots=["s.csv"],
                            finished_at=started.replace(second=5))
    assert summary["references"] == 10 and summary["alive"] == 8
    assert summary["outcomes"]["gone"] == 2 and summary["outcomes"]["timeout"] == 0
    assert summary["matches"] == {"known": {"md5": 1}}
    assert summary["refs_per_second"] == 2.0
    assert summary["started_at"] == "2026-01-01T00:00:00Z"


def test_match_pipeline_reuses_the_lists_the_runner_checked(tmp_path) -> None:
    """A list is loaded once per crawl: ``check_inputs`` keeps what it loaded, the pipeline matches with it
    (the same objects: Scrapy's deep copy of the settings does not copy them)."""
    from crawler.pipelines.matching import MatchPipeline
    from crawler.runner import check_inputs, project_settings

    snapshot = tmp_path / "s.csv"
    snapshot.write_text("url\nhttp://127.0.0.1:9/a.jpg\n", encoding="utf-8")
    known = tmp_path / "known.csv"
    known.write_text(f"algorithm,hash\nmd5,{'0' * 32}\n", encoding="utf-8")
    settings = project_settings({"REFWATCH_SNAPSHOTS": [str(snapshot)], "REFWATCH_HASHLISTS": [f"known={known}"]})
    check_inputs(settings)
    loaded = settings.get("REFWATCH_LOADED_HASHLISTS")
    assert [hl.name for hl in loaded] == ["known"]
    wanted = ("REFWATCH_HASHLISTS", "REFWATCH_LOADED_HASHLISTS", "REFWATCH_RADII", "REFWATCH_PDQ_MIN_QUALITY")
    crawler = get_crawler(settings_dict={name: settings[name] for name in wanted})
    assert crawler.settings.get("REFWATCH_LOADED_HASHLISTS") is loaded
    pipeline = MatchPipeline.from_crawler(crawler)
    assert pipeline.matcher._indexes["md5"][0][0] is loaded[0]


def test_redirects_drop_the_referer_without_warning() -> None:
    from scrapy import signals
    from scrapy.http import HtmlResponse

    from middlewares.redirect import NoRefererRedirectMiddleware

    crawler = get_crawler(settings_dict=SETTINGS)
    middleware = build_from_crawler(NoRefererRedirectMiddleware, crawler)
    # Scrapy's RedirectMiddleware looks for RefererMiddleware at engine start and warns that it is off
    answered = crawler.signals.send_catch_log(signals.engine_started)
    assert not [receiver for receiver, _ in answered if getattr(receiver, "__self__", None) is middleware]
    request = Request("http://a.example/x.jpg", headers={"Referer": "http://pages.example/p"})
    redirect = HtmlResponse("http://a.example/x.jpg", status=301, headers={"Location": "http://b.example/y.jpg"},
                            request=request)
    followed = middleware.process_response(request, redirect)
    assert isinstance(followed, Request) and followed.url == "http://b.example/y.jpg"
    assert "Referer" not in followed.headers


def test_any_pixel_limit_gives_pillow_a_block_size_it_takes() -> None:
    from PIL import Image

    from middlewares.hashing import hold_images_in_one_block

    hold_images_in_one_block(50_000_001)  # 4 x 50,000,001 + 4096 is no multiple of Pillow's 4096
    assert Image.core.get_block_size() >= 4 * 50_000_001 and Image.core.get_block_size() % 4096 == 0


def test_the_crawl_stats_collector_counts_without_the_spider_argument_shim() -> None:
    from crawler import settings as crawl_settings
    from crawler.stats import DirectStatsCollector

    crawler = get_crawler(settings_dict={"STATS_CLASS": crawl_settings.STATS_CLASS})
    stats = crawler.stats
    assert type(stats) is DirectStatsCollector
    stats.inc_value("refwatch/x")
    stats.inc_value("refwatch/x", 2)
    stats.max_value("refwatch/peak", 5)
    stats.max_value("refwatch/peak", 3)
    assert stats.get_value("refwatch/x") == 3 and stats.get_value("refwatch/peak") == 5
    # no per-call wrapper: the bound method itself, as object.__getattribute__ gives it
    assert stats.inc_value.__func__ is DirectStatsCollector.inc_value


def test_gc_tuning_freezes_start_up_objects_while_the_engine_runs_and_restores_after() -> None:
    import gc

    from scrapy.exceptions import NotConfigured

    from crawler import settings as crawl_settings
    from crawler.extensions.gc_tuning import GcTuningExtension

    before_threshold, before_frozen = gc.get_threshold(), gc.get_freeze_count()
    crawler = get_crawler(settings_dict={"REFWATCH_GC_FREEZE": True,
                                         "REFWATCH_GC_THRESHOLD": crawl_settings.REFWATCH_GC_THRESHOLD})
    ext = build_from_crawler(GcTuningExtension, crawler)
    survivor = [[] for _ in range(10)]  # alive at engine start: frozen with the rest
    try:
        ext.engine_started()
        assert gc.get_threshold() == (7000, 10, 10)
        assert gc.get_freeze_count() > before_frozen + len(survivor)
    finally:
        ext.engine_stopped()
    assert gc.get_threshold() == before_threshold and gc.get_freeze_count() == before_frozen

    with pytest.raises(NotConfigured):
        build_from_crawler(GcTuningExtension, get_crawler(settings_dict={"REFWATCH_GC_FREEZE": False,
                                                                         "REFWATCH_GC_THRESHOLD": []}))
    with pytest.raises(NotConfigured, match="non-negative"):
        build_from_crawler(GcTuningExtension, get_crawler(settings_dict={"REFWATCH_GC_THRESHOLD": [-1]}))
