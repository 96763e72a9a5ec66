"""A fork server for shard children: import the crawl stack once, then fork a warm child per shard attempt.

A ``refwatch _shard`` child started by exec pays a crawl process's start-up (1.4-2.0 s of CPU until its engine
starts: Scrapy, Twisted, numba's cached kernels, scipy.fft, pyarrow, docs/performance.md). The zygote
(``python -m crawler.workers.zygote``, started by the parent with the children's environment) runs a *warm*
function once (``crawler.cli.crawl.warm_shard_process``: imports and loads everything a child needs, installs
no reactor), then forks one child per request; the child sets the environment and working folder it was asked
for and calls an *entry* (``crawler.cli.main.main``) with its argv, exactly as the exec'd child's ``__main__``
would. Both are named by string: this module imports nothing of refwatch, so it sits below the command line.

Who sees what. The child is the zygote's child: only the zygote can reap it. Over a Unix ``SOCK_SEQPACKET``
socket pair the zygote sends the parent, per child, a ``started`` message with the pid and a *pidfd* of it
(``SCM_RIGHTS``), and an ``exited`` message with its exit status and CPU (``wait4``) once it is reaped. The
parent signals the child through the pidfd (no pid-reuse race) and sees it end through the pidfd too, so a
child whose zygote died is still seen to end (its status is then unknown: ``STATUS_UNKNOWN``, a failed
attempt). The child stays in the parent's process group, as an exec'd child does (a Ctrl-C or a ``killpg``
reaches it); the zygote blocks SIGINT and SIGTERM (the parent decides, and the zygote must outlive its
children to report their statuses) and the child restores an interpreter's handlers, then unblocks them.

Fork safety, checked before every fork (a refusal makes the parent fall back to exec): one Python thread and
no reactor installed in the zygote. Native threads found after the imports, and why they are safe
(tests/test_zygote.py forks a child that uses each of them): OpenBLAS's pools (numpy's and scipy's copies, one
thread each on 2 cores) register a ``pthread_atfork`` handler that shuts the pool down before a fork and the
child starts its own on first use; pyarrow's jemalloc background thread: jemalloc's own ``pthread_atfork``
handlers make the child's allocator consistent and turn its background purging off (the child purges inline);
Arrow's CPU and I/O thread pools are created on first use and re-created in a forked child. The child closes
the zygote's socket and its siblings' pidfds; standard streams are the zygote's (stdin ``/dev/null``, the rest
the parent's); ``random`` reseeds itself after a fork (CPython), numpy's global generator is reseeded here;
logging handlers: the zygote configures none, the child's crawl configures its own.

The package: ``client`` (the parent's side: ``Zygote``, ``ForkedChild``), ``server`` (the zygote's side: ``serve``).
"""

from __future__ import annotations

from crawler.workers.zygote.client import STATUS_UNKNOWN, ForkedChild, Zygote, ZygoteError, available
from crawler.workers.zygote.server import fork_hazards, native_threads, set_process_name

__all__ = ["STATUS_UNKNOWN", "ForkedChild", "Zygote", "ZygoteError", "available", "fork_hazards", "native_threads",
           "set_process_name"]
