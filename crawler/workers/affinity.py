"""One shard child per CPU: which CPU each running child is bound to, and the binding itself.

A crawl process is a reactor thread plus hashing threads that hand the GIL back and forth many times per
image. Left to the scheduler, those threads spread over every core, and each hand-off wakes another core.
Measured on this project's 2-core machine (``bench/scaling_bench.py``, quiet, interleaved rounds): one crawl
process bound to one core crawled as fast as an unbound one (103-120 images/s against 102-145) on 8.3-9.7 ms
of CPU per image instead of 9.2-12.8; with ``--processes 2``, a bound shard child spent 3.1 s of CPU (2.8-4.2)
where an unbound one spent 3.9 (2.9-4.6), and the run did 157 images/s (150-183) against 144 (139-160). So when
a parent owns the CPUs it may use (``--processes`` equal to their number, the default), each running child is
bound to a CPU of its own: the threads of one crawl share a core, and the crawls do not crowd each other. A
run of one shard, which the command crawls in its own process, is bound on the same terms to the CPU the
scheduler put it on (``bind_lone_crawl``): 7.54-8.55 against 9.12-10.72 ms of CPU per image, 22.7-25.7 against
20.9-24.5 s of wall, on 3,000 images (2026-12-07 18:40 UTC, 3 interleaved rounds).

``REFWATCH_PIN_PROCESSES`` (environment of the parent): ``auto`` (the default: bind when ``--processes``
equals the number of CPUs this process may run on, so two workers sharing a machine, or ``--processes``
below the core count, leave the scheduler free), ``on`` (always; CPUs are reused round-robin when there are
more processes than CPUs) or ``off``. The CPUs are the parent's own (``sched_getaffinity``), so a parent run
under ``taskset`` or in a container with a cpuset binds its children inside that set.

A bound process's threads also run under Linux's ``SCHED_BATCH`` policy (``REFWATCH_SCHED_BATCH``: ``on``, the
default, or ``off``). Under the normal policy a thread that wakes up (the reactor, on a socket event) preempts
the one running on its CPU (a hashing thread, mid-image): about ten switches per image, each costing the
preempted thread its warm caches. A batch thread waits for the running one's time slice instead. A crawl of
3,000 web-sized images bound to one CPU, 4 interleaved rounds (2026-12-07 20:05 UTC): 8.13-10.86 against
8.80-11.82 ms of CPU per image (6-16% less in every pair), 11-15 k context switches against 24-31 k, and
the wall time 2-16% shorter. A reply waits a few milliseconds longer at most; no time-out is near that.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

PIN_ENV = "REFWATCH_PIN_PROCESSES"
PIN_MODES = ("auto", "on", "off")
BATCH_ENV = "REFWATCH_SCHED_BATCH"
#: The folder of the per-CPU lock files bound crawls hold (default: refwatch-cpus in the temporary folder).
CPU_LOCKS_ENV = "REFWATCH_CPU_LOCKS"


def _env_mode(env: Mapping[str, str] | None, name: str, modes: tuple[str, ...]) -> str:
    """The mode environment variable ``name`` asks for, one of ``modes``; its first (the default) when it is
    unset or unknown (with a warning)."""
    mode = (os.environ if env is None else env).get(name, "").strip().lower() or modes[0]
    if mode not in modes:
        logger.warning("%s=%r: expected one of %s; using %s", name, mode, ", ".join(modes), modes[0])
        return modes[0]
    return mode


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, which taskset and cpusets narrow)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def default_processes() -> int:
    """One crawl process per CPU this process may use."""
    return max(1, len(allowed_cpus()))


class CpuSlots:
    """The CPUs running children are bound to: ``take`` one for a child, ``give_back`` it when the child ends.
    Without CPUs (binding off) ``take`` gives ``None``, and children run wherever the scheduler puts them."""

    def __init__(self, cpus: Iterable[int] | None) -> None:
        self._free: list[int] | None = None if cpus is None else list(cpus)

    @classmethod
    def for_processes(cls, processes: int, env: Mapping[str, str] | None = None) -> CpuSlots:
        mode = _env_mode(env, PIN_ENV, PIN_MODES)
        cpus = allowed_cpus()
        if mode == "off" or (mode == "auto" and processes != len(cpus)):
            return cls(None)
        return cls(cpus[i % len(cpus)] for i in range(max(1, processes)))

    @property
    def binding(self) -> bool:
        return self._free is not None

    def take(self) -> int | None:
        if not self._free:
            return None
        return self._free.pop(0)

    def give_back(self, cpu: int | None) -> None:
        if cpu is not None and self._free is not None:
            self._free.append(cpu)
            self._free.sort()


def current_cpu() -> int | None:
    """The CPU this process last ran on (``/proc/self/stat``, field 39), or ``None`` where that is unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return None


_claimed: dict[int, int] = {}  # CPU -> the descriptor of its lock file, held for this process's life


def claim_cpu(preferred: int | None, cpus: Sequence[int], env: Mapping[str, str] | None = None) -> int | None:
    """A CPU of ``cpus`` that no other bound refwatch crawl on this machine holds, ``preferred`` first; ``None``
    when every one is held.

    Each bound crawl process (a lone crawl, a shard child of any command) holds an exclusive ``flock`` on
    ``refwatch-cpus/cpu-N.lock`` in the temporary folder (``REFWATCH_CPU_LOCKS``) for as long as it lives; the
    kernel lets go of it however the process ends. So two commands started at once on one machine do not bind
    their crawls to the same CPU: the second takes another, or none. Where a lock file cannot be made, the CPU
    counts as free (binding as before)."""
    folder = (os.environ if env is None else env).get(CPU_LOCKS_ENV) or os.path.join(tempfile.gettempdir(),
                                                                                     "refwatch-cpus")
    try:
        os.makedirs(folder, mode=0o1777, exist_ok=True)
    except OSError as exc:
        logger.debug("cannot make the CPU lock folder %s: %s", folder, exc)
    order = ([preferred] if preferred in cpus else []) + [cpu for cpu in cpus if cpu != preferred]
    for cpu in order:
        if cpu in _claimed:
            return cpu
        try:
            fd = os.open(os.path.join(folder, f"cpu-{cpu}.lock"), os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            logger.debug("cannot make the lock file of CPU %d: %s", cpu, exc)
            return cpu
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # another crawl is bound to it
        _claimed[cpu] = fd
        return cpu
    return None


def bind_to_free_cpu(preferred: int | None, env: Mapping[str, str] | None = None) -> list[int]:
    """Bind this process to ``preferred``, or to another CPU when another bound crawl holds it (``claim_cpu``).
    Returns the CPUs bound to; ``[]`` when every CPU is held (the process is left to the scheduler)."""
    cpu = claim_cpu(preferred, allowed_cpus(), env)
    return [] if cpu is None else sorted(bind_process([cpu], env))


def bind_lone_crawl(processes: int, env: Mapping[str, str] | None = None) -> list[int]:
    """Bind a crawl that the command runs in its own process (a run of one shard) to one CPU, on the terms
    shard children are bound on: when the command owns its CPUs (``--processes`` equal to their number, the
    default) or ``REFWATCH_PIN_PROCESSES=on``. The CPU is the one the scheduler has put this process on (most
    likely an idle one) unless another bound crawl holds it. Returns the CPUs bound to (``[]``: left to the
    scheduler).

    One process alone crawled as fast bound to one core as unbound (-15% to +28% images per second over six
    comparisons on 2026-12-07) on 17-39% less CPU per image (docs/performance.md)."""
    if not CpuSlots.for_processes(processes, env).binding:
        return []
    bound = bind_to_free_cpu(current_cpu(), env)
    if not bound:
        logger.warning("every CPU is held by another bound refwatch crawl: this crawl is left to the scheduler")
    return bound


def bind_process(cpus: Iterable[int], env: Mapping[str, str] | None = None) -> set[int]:
    """Bind every thread of this process to ``cpus`` (Linux binds threads one by one; threads started later
    inherit their creator's binding), under ``SCHED_BATCH`` unless ``REFWATCH_SCHED_BATCH=off``. Returns the
    binding now in force; an impossible one (a CPU the process may not use) is logged and leaves the process
    as it was."""
    wanted = set(cpus)
    for task in _tasks():
        try:
            os.sched_setaffinity(task, wanted)
        except ProcessLookupError:
            continue  # that thread has ended
        except (OSError, ValueError) as exc:
            logger.warning("cannot bind this crawl to CPUs %s: %s", sorted(wanted), exc)
            return set(os.sched_getaffinity(0))
    if batch_scheduling_wanted(env):
        schedule_as_batch()
    return set(os.sched_getaffinity(0))


def batch_scheduling_wanted(env: Mapping[str, str] | None = None) -> bool:
    return _env_mode(env, BATCH_ENV, ("on", "off")) == "on"


def schedule_as_batch() -> bool:
    """Put every thread of this process under ``SCHED_BATCH`` (threads started later inherit it): a thread
    that wakes up waits for the running one's time slice instead of preempting it. Returns whether it took;
    a system without the policy, or that refuses it, leaves the threads as they were."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None:  # not Linux
        return False
    for task in _tasks():
        try:
            os.sched_setscheduler(task, batch, os.sched_param(0))
        except ProcessLookupError:
            continue
        except OSError as exc:  # e.g. a sandbox that forbids it: the normal policy is only slower
            logger.debug("cannot schedule this crawl's threads as batch: %s", exc)
            return False
    return True


def _tasks() -> list[int]:
    """The thread ids of this process."""
    try:
        return [int(task) for task in os.listdir("/proc/self/task")]
    except OSError:
        return [os.getpid()]
