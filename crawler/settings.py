"""Scrapy settings for refwatch: every default lives here, and the CLI only translates options into them.

refwatch's own settings share the ``REFWATCH_`` prefix. Where Scrapy already has a setting for a thing
(timeouts, body size, concurrency, robots.txt, User-Agent) refwatch uses Scrapy's, so Scrapy users find it
where they expect it.
"""

from __future__ import annotations

from scrapy.settings import default_settings

from crawler import __version__

BOT_NAME = "refwatch"
SPIDER_MODULES = ["spiders"]
NEWSPIDER_MODULE = "spiders"

# --- refwatch ------------------------------------------------------------------------------------------
REFWATCH_SNAPSHOTS: list[str] = []  # snapshot files to replay (the CLI's positional arguments)
REFWATCH_OUT = "./refwatch-data"  # runs/<run_id>/{outcomes/*.parquet,summary.json} go here
REFWATCH_STAGING_DIR: str | None = None  # with an s3:// REFWATCH_OUT: the local staging copy (default: temp folder)
REFWATCH_RUN_ID: str | None = None  # None: a new id from the start time; the same id redoes (overwrites) a run
REFWATCH_QUEUE: str | None = None  # None: file://<REFWATCH_OUT>/queue
REFWATCH_QUEUE_BATCH_EVENTS = 500  # events per queue batch object...
REFWATCH_QUEUE_BATCH_SECONDS = 2.0  # ...or fewer, once the oldest buffered event is this old
REFWATCH_QUEUE_CLOSE_TIMEOUT = 300.0  # at the end of a crawl, how long to keep retrying unwritten batches
REFWATCH_S3_ENDPOINT_URL: str | None = None  # an S3-compatible endpoint; None: boto3's (AWS_ENDPOINT_URL or AWS)
REFWATCH_S3_SSE: str | None = None  # server-side encryption of S3 writes: None, "AES256" or "aws:kms"
REFWATCH_S3_SSE_KMS_KEY_ID: str | None = None  # the KMS key for "aws:kms" (None: the bucket's default key)
REFWATCH_HASHLISTS: list[str] = []  # "[NAME=]PATH", repeatable
REFWATCH_HASHLIST_ALGORITHM: str | None = None  # for plain-text lists, one hex hash a line
REFWATCH_HASHLIST_SKIP_BAD_LINES = False  # skip and count malformed list lines instead of stopping
REFWATCH_LOADED_HASHLISTS = None  # set by the runner: the lists it loaded to check them, reused by the match pipeline
REFWATCH_RADII = {"phash": 8, "dhash": 6, "pdq": 31}  # Hamming radius per algorithm: measured in docs/matching.md
REFWATCH_PDQ_MIN_QUALITY = 50  # PDQ hashes below this quality are not matched, as PDQ recommends
REFWATCH_HASHES = ["md5", "sha1", "sha256", "phash", "dhash", "pdq"]  # what to compute of each body (--hashes)
REFWATCH_PDQ_DIHEDRAL = False  # also match the 7 rotations/flips of each image's PDQ (from the same DCT: ~free)
# Decompression-bomb guard: larger images are decode_error, never decoded. 48 M is an 8000x6000 photo; heavier
# modes and formats get fewer pixels, down to 11.5 M for an RGBA JPEG 2000 (crawler.hashing.digest.pixel_limit),
# so no image is budgeted more than ~275 MiB to decode (an upper bound: the largest RGB image peaks at 183 MiB).
REFWATCH_MAX_PIXELS = 48_000_000
REFWATCH_HASH_THREADS = 2  # image decoding and hashing run in this many threads, off the reactor
REFWATCH_ALLOW_PRIVATE_NETWORKS = False  # True lifts the address guard (demo and tests on loopback)
REFWATCH_BACKOFF_MAX_SECONDS = 120.0  # the longest a 429/503 (Retry-After) backs a host off
REFWATCH_BACKOFF_DEFAULT_SECONDS = 5.0  # back-off when a 429/503 has no usable Retry-After
REFWATCH_OUTCOMES_BATCH_ROWS = 1000  # outcome rows per Parquet part file...
REFWATCH_OUTCOMES_FLUSH_SECONDS = 10.0  # ...or fewer, when this long has passed since the last part
REFWATCH_FINAL_PART_ROWS = 500_000  # when the run ends, its small parts are rewritten as parts of this many rows
# A sharded run (crawler/shards/): each child crawl gets one shard of the plan and an attempt id; its parts go
# to the attempt's folder and it commits the shard instead of finishing the run (the parent does that).
REFWATCH_SHARD: dict[str, object] = {}
REFWATCH_SHARD_ATTEMPT = ""
REFWATCH_BOUND_CPUS: list[int] = []  # the CPUs this crawl process bound itself to (crawler/workers/affinity.py)
REFWATCH_SHARD_ATTEMPTS = 3  # a shard whose child crawl fails is tried this many times before the run fails
REFWATCH_STATS_FILE: str | None = None  # a shard crawl writes its counters here for its worker's /metrics
REFWATCH_INPUT_CACHE: str | None = None  # s3:// snapshots and lists are cached here (default <tmp>/refwatch-inputs)
REFWATCH_PLACEHOLDERS: str | None = None  # your known placeholder list (kind,value lines) beside the shipped one
REFWATCH_PLACEHOLDER_MIN_URLS = 20  # one content served for this many distinct URLs of one domain: placeholder
REFWATCH_PLACEHOLDER_MIN_REDIRECTS = 20  # this many distinct URLs of one domain redirected to one URL: placeholder
REFWATCH_RECHECK_RUN: str | None = None  # --recheck RUN: replay only some references of that earlier run...
REFWATCH_RECHECK_ONLY: list[str] = []  # ...those with these outcome groups (dead, failed, placeholder)
REFWATCH_METRICS_TEXTFILE: str | None = None  # at the end of a run, its gauges for node_exporter's textfile collector
REFWATCH_PUSHGATEWAY: str | None = None  # at the end of a run, push its gauges to this Pushgateway URL
REFWATCH_PUSHGATEWAY_JOB = "refwatch"  # the Pushgateway job name (grouped by snapshot series)
REFWATCH_METRICS_PORT: int | None = None  # serve Prometheus /metrics on this port while the crawl runs
REFWATCH_METRICS_ADDRESS = "0.0.0.0"  # where /metrics listens (Prometheus scrapes it from elsewhere)
REFWATCH_PROGRESS = False  # a progress bar on the terminal (the CLI turns it on for a TTY)

# --- Scrapy, chosen for re-checking references ----------------------------------------------------------
USER_AGENT = f"refwatch/{__version__} (+https://github.com/refwatch/refwatch; dataset reference audit)"
ROBOTSTXT_OBEY = False  # refwatch re-checks references a snapshot already holds; --obey-robots turns it on
CONCURRENT_REQUESTS = 64
CONCURRENT_REQUESTS_PER_DOMAIN = 8  # politeness: at most this many requests to one host at once
CONCURRENT_ITEMS = 1  # measured: 0.69 ms of Scrapy CPU per response at 1 vs 1.18 ms at the default 100
DOWNLOAD_TIMEOUT = 30
DOWNLOAD_MAXSIZE = 50 * 1024 * 1024  # --max-bytes; larger answers are too_large
REFWATCH_MAX_HEAD_BYTES = 64 * 1024  # a response head (status and header lines) larger than this is http_error...
REFWATCH_MAX_HEADER_LINES = 256  # ...and so is one with more header lines (Twisted bounds only each line)
DOWNLOAD_WARNSIZE = 0
DNS_TIMEOUT = 15
REDIRECT_MAX_TIMES = 5
METAREFRESH_ENABLED = False  # an image reference does not follow HTML meta refreshes
RETRY_TIMES = 2  # transient failures (timeouts, resets, 5xx) get two more tries before their outcome
RETRY_HTTP_CODES = [500, 502, 503, 504, 522, 524, 408, 429]
RETRY_GIVE_UP_LOG_LEVEL = "DEBUG"  # a dead link is data (an outcome row), not an error in the log
HTTPERROR_ALLOW_ALL = True  # every status is an outcome: the spider sees 404s too
COOKIES_ENABLED = False
SCHEDULER_PRIORITY_QUEUE = "scrapy.pqueues.DownloaderAwarePriorityQueue"  # broad crawls: spread over hosts
REACTOR_THREADPOOL_MAXSIZE = 20  # DNS look-ups
# Twisted's own epoll reactor, not Scrapy's default asyncio one: refwatch awaits only Deferreds (nothing of
# asyncio), and the asyncio bridge cost 0.13-0.28 ms of CPU on every request (404 path 1.48-1.63 -> 1.35 ms/ref,
# crawl_bench --flat-memory). Linux only, as refwatch's deployment is.
TWISTED_REACTOR = "twisted.internet.epollreactor.EPollReactor"
# Scrapy's caching threaded resolver, plus: NXDOMAIN raises its own error (never retried, see
# middlewares/address_guard.py) and is cached too, bounded by DNSCACHE_SIZE like Scrapy's positive cache.
TWISTED_DNS_RESOLVER = "middlewares.resolver.RefwatchResolver"
# Twisted's 0.3 s connection attempt delay paced refused connections: 65 -> 286 refs/s (bench/deadlink_bench.py).
DOWNLOAD_HANDLERS = {"http": "crawler.download.handler.FastHTTP11DownloadHandler",
                     "https": "crawler.download.handler.FastHTTP11DownloadHandler"}
# A refused connection's retries are dialled at once inside its download, not as new trips through Scrapy's
# scheduler and middlewares (crawler/download/redial.py; False: Scrapy's RetryMiddleware retries them).
REFWATCH_REDIAL_REFUSED = True
LOG_LEVEL = "INFO"
# Below DEBUG, no "Crawled"/"Scraped" record is built for each response and item (see crawler/logformatter.py):
# measured on the 404 path under cProfile, logging._log went from 2 calls and 0.28 ms a reference to none.
LOG_FORMATTER = "crawler.logformatter.QuietLogFormatter"
# DownloaderStats counts request and response bytes and statuses for Scrapy's stats dump; refwatch's outcome
# stats, summary and metrics read none of its keys (they count outcomes and refwatch/response_bytes).
# Measured with the trims below: stats calls 30 -> 18 a reference, the middleware chain 31 -> 19 calls.
DOWNLOADER_STATS = False
LOGSTATS_INTERVAL = 60.0
# Scrapy's MemoryStatsCollector without the per-call shim that wraps every stats method to warn about a
# `spider` argument (crawler/stats.py): 2.2 us a call, ~18 calls (~40 us) a reference.
STATS_CLASS = "crawler.stats.DirectStatsCollector"

# Spider middlewares that do nothing for references replayed from a snapshot (measured per-request cost; with
# the log formatter and DOWNLOADER_STATS: 404 path 10.6 -> 8.8 ms a reference under cProfile, -17%).
SPIDER_MIDDLEWARES = {
    "scrapy.spidermiddlewares.referer.RefererMiddleware": None,
    "scrapy.spidermiddlewares.urllength.UrlLengthMiddleware": None,
    "scrapy.spidermiddlewares.depth.DepthMiddleware": None,
    # warns about meta copied into requests yielded from a response; parse() yields only items
    "scrapy.spidermiddlewares.metacopy.MetaCopyDetectionMiddleware": None,
    # with HTTPERROR_ALLOW_ALL it lets every status through: nothing to do
    "scrapy.spidermiddlewares.httperror.HttpErrorMiddleware": None,
}

# Fetched bytes never persist: no HTTP cache, no files/images pipeline.
HTTPCACHE_ENABLED = False
# refwatch fetches hostile content and runs in people's cloud accounts: no code-executing consoles.
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False

# Downloader middleware order (process_response runs from high numbers to low):
# - the address guard (90) resolves first, once: a name that does not exist is one attempt, never retried, and
#   a refused address fails before robots.txt (100), so a refused host is never contacted at all (it replaces
#   the DNS verdict that resolved at 85; the download handler checks again the address it dials);
# - host back-off (560) sees a 429/503 before RetryMiddleware (550) re-schedules it, so the retry waits;
# - hashing (540) sees bodies after HttpCompressionMiddleware (590) decompressed them and after
#   RetryMiddleware (550) took what it will retry, so it hashes final answers only.
# Scrapy's downloader middlewares minus cookies: off here (COOKIES_ENABLED), but Scrapy imports every listed
# component, even one set to None, and this one imports tldextract: ~0.06 s of every crawl's start-up.
DOWNLOADER_MIDDLEWARES_BASE = {path: order for path, order in default_settings.DOWNLOADER_MIDDLEWARES_BASE.items()
                               if path != "scrapy.downloadermiddlewares.cookies.CookiesMiddleware"}
DOWNLOADER_MIDDLEWARES = {
    # Nothing to do for a replayed reference: every request is dont_filter and the spider has no
    # allowed_domains (Offsite); refwatch sets no HTTP_USER nor http_user/http_pass meta (HttpAuth).
    # DefaultHeaders, UserAgent, HttpProxy and DownloadTimeout stay: they change what is sent.
    "scrapy.downloadermiddlewares.offsite.OffsiteMiddleware": None,
    "scrapy.downloadermiddlewares.httpauth.HttpAuthMiddleware": None,
    "middlewares.address_guard.AddressGuardMiddleware": 90,
    "middlewares.backoff.HostBackoffMiddleware": 560,
    # Scrapy's, in its place, without keeping a failed gzip bomb's inflated bytes alive (middlewares/compression.py)
    "scrapy.downloadermiddlewares.httpcompression.HttpCompressionMiddleware": None,
    "middlewares.compression.DecompressionMiddleware": 590,
    # shared slots (REFWATCH_REDIS_URL): last before the download, first back, freed before Retry/Redirect re-ask
    "middlewares.shared_politeness.SharedPolitenessMiddleware": 950,
    "middlewares.hashing.ImageHashMiddleware": 540,
    # Scrapy's, in its place, dropping any Referer without warning that RefererMiddleware is off (see above)
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "middlewares.redirect.NoRefererRedirectMiddleware": 600,
}

# Matching decides `matched` before the row is written, so the writer (last) sees final rows.
ITEM_PIPELINES = {
    "crawler.pipelines.matching.MatchPipeline": 300,
    "crawler.pipelines.outcomes.OutcomeWriterPipeline": 800,
}

# Scrapy's extensions minus RemoteControl: off anyway (REMOTE_CONTROL_ENABLED), but Scrapy imports every
# listed extension, even one set to None, and this one imports aiohttp: ~0.2 s of every crawl's start-up.
EXTENSIONS_BASE = {path: order for path, order in default_settings.EXTENSIONS_BASE.items()
                   if path != "scrapy.extensions.remote_control.RemoteControl"}
EXTENSIONS = {
    "crawler.extensions.metrics.MetricsExtension": 500,
    "crawler.extensions.summary.SummaryExtension": 510,
    "crawler.extensions.progress.ProgressExtension": 520,
    "crawler.extensions.gc_tuning.GcTuningExtension": 530,
}
# --- the garbage collector while the engine runs (crawler/extensions/gc_tuning.py) ---------------------------
REFWATCH_GC_FREEZE = True  # gc.freeze() what exists at engine start: full collections skip start-up objects
REFWATCH_GC_THRESHOLD = [7000, 10, 10]  # gc.set_threshold while crawling (CPython's default: 700, 10, 10); [] keeps

# --- politeness shared by every worker of a crawl, through Redis (middlewares/shared_politeness.py) -------
REFWATCH_REDIS_URL: str | None = None  # redis://HOST:PORT/DB the workers share; None: local per-host limits only
REFWATCH_SHARED_POLITENESS = True  # False (refwatch seed -s REFWATCH_SHARED_POLITENESS=false): local limits only
REFWATCH_SHARED_PER_HOST: int | None = None  # in flight to a host, all workers; None: CONCURRENT_REQUESTS_PER_DOMAIN
REFWATCH_POLITENESS_LEASE: float | None = None  # a dead worker's slots come back after it; None: DOWNLOAD_TIMEOUT+10
REFWATCH_POLITENESS_SCOPE: str | None = None  # who shares limits: None: the run's workers; a name: all runs using it
REFWATCH_POLITENESS_POLL_MAX = 0.25  # longest pause between two tries at a full host (from 0.05 s, doubling, jitter)
REFWATCH_POLITENESS_RETRY_REDIS = 10.0  # after Redis fails to answer: seconds on local limits alone, then try again

# --- the address allow-list (crawler/addresses.py; checked by the address guard and where the handler dials) ---
# Networks fetched even though they are not public (loopback, private, link-local...), e.g. ["10.20.0.0/16",
# "fd00:1::/64"]: an intranet mirror of a dataset. Everything else non-public stays blocked_address.
# REFWATCH_ALLOW_PRIVATE_NETWORKS (above) allows every address instead.
REFWATCH_ALLOW_NETWORKS: list[str] = []

# --- decode memory (crawler/hashing/budget.py; middlewares/hashing.py) -----------------------------------
# Pixels decoded at once by all hashing threads together, counted as RGB pixels (6 bytes each, an upper bound;
# heavier modes and formats count more: crawler.hashing.digest.decode_cost). An image that does not fit
# waits; one larger than the budget (but within REFWATCH_MAX_PIXELS, which bounds every image's cost by the largest
# RGB image's) is decoded alone. The default is one REFWATCH_MAX_PIXELS RGB image: ~275 MiB of decode memory
# whatever REFWATCH_HASH_THREADS is (measured, tests/test_memory.py: eight 48-megapixel PNGs at once peaked a
# crawl at 457 MiB; the largest image of each heavy format at once 585-597 MiB; at 64 M, 643 MiB and 1 GiB without).
REFWATCH_DECODE_PIXEL_BUDGET = 48_000_000

# --- body memory (crawler/download/body_budget.py; crawler/download/budgeted_body.py) ---------------------
# Body bytes held at once by all downloads together, from their arrival until the body is dropped (hashed, or
# failed, cancelled, timed out, too_large, not hashed). A download the budget refuses stops reading (its
# socket is paused, so TCP slows the sender) until bytes come back; time paused does not count towards
# DOWNLOAD_TIMEOUT, up to one more timeout. The budget keeps one 64 KiB read per download slot
# (CONCURRENT_REQUESTS: 4 MiB) and room for one body at DOWNLOAD_MAXSIZE, so the bytes held never pass it and
# the download holding the most always goes on; other downloads share the rest (here ~42 MiB). Smaller than
# that, a body that does not fit is downloaded alone, past the budget. 0: no budget (each download holds up
# to DOWNLOAD_MAXSIZE: 64 x 50 MiB). Measured (tests/test_memory.py): eight oversized chunked bodies at once
# 296 MiB (565 without); every hostile answer at once 642-652 MiB with 48-megapixel images (747 at 64 M; 889
# without the budget); 64 MiB gave 702-725 MiB and 56 MiB 695-697 MiB at 64 M but turned oversized answers into
# timeouts (they wait in turn).
REFWATCH_BODY_BUDGET = 96 * 1024 * 1024
