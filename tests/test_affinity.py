"""One shard child per CPU (crawler/workers/affinity.py): which CPU each running child gets, and the binding."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from crawler.workers.affinity import BATCH_ENV, CPU_LOCKS_ENV, PIN_ENV, CpuSlots, allowed_cpus, default_processes
from tests.helpers import REPO_ROOT


def test_auto_binds_only_a_parent_that_owns_its_cpus() -> None:
    cpus = allowed_cpus()
    owner = CpuSlots.for_processes(len(cpus), {})
    assert owner.binding and sorted(owner.take() for _ in cpus) == cpus
    assert owner.take() is None  # every CPU has its child
    assert default_processes() == len(cpus)
    # fewer or more processes than CPUs (two workers on one machine, or --processes below the cores): unbound
    for processes in (len(cpus) + 1, max(1, len(cpus) - 1) if len(cpus) > 1 else len(cpus) + 2):
        slots = CpuSlots.for_processes(processes, {PIN_ENV: "auto"})
        assert not slots.binding and slots.take() is None


def test_on_reuses_cpus_round_robin_and_off_never_binds() -> None:
    cpus = allowed_cpus()
    slots = CpuSlots.for_processes(2 * len(cpus) + 1, {PIN_ENV: "on"})
    taken = [slots.take() for _ in range(2 * len(cpus) + 1)]
    assert all(cpu in cpus for cpu in taken)
    assert max(taken.count(cpu) for cpu in cpus) == 3 and min(taken.count(cpu) for cpu in cpus) >= 2
    assert not CpuSlots.for_processes(len(cpus), {PIN_ENV: "off"}).binding
    assert CpuSlots.for_processes(len(cpus), {PIN_ENV: "sometimes"}).binding  # unknown: as auto, with a warning


def test_an_ended_child_gives_its_cpu_to_the_next() -> None:
    slots = CpuSlots([4, 7])
    first, second = slots.take(), slots.take()
    assert (first, second) == (4, 7) and slots.take() is None
    slots.give_back(first)
    assert slots.take() == 4
    slots.give_back(None)  # a child that was never bound changes nothing
    assert slots.take() is None


_BIND_SCRIPT = """
import json, os, threading
from crawler.workers.affinity import bind_process
ready, done = threading.Event(), threading.Event()
before = threading.Thread(target=lambda: (ready.set(), done.wait(10)))
before.start(); ready.wait(10)
bound = bind_process([CPU])
seen = {}
after = threading.Thread(target=lambda: seen.update(after=sorted(os.sched_getaffinity(0)),
                                                     after_policy=os.sched_getscheduler(0)))
after.start(); after.join()
seen["before"] = sorted(os.sched_getaffinity(before.native_id))
seen["before_policy"] = os.sched_getscheduler(before.native_id)
seen["main"] = sorted(bound)
seen["main_policy"] = os.sched_getscheduler(0)
done.set(); before.join()
print(json.dumps(seen))
"""


def _bind_in_a_new_process(cpu: int, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _BIND_SCRIPT.replace("CPU", str(cpu))], capture_output=True,
                         text=True, cwd=REPO_ROOT, timeout=60, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_binding_reaches_threads_already_running_and_threads_started_later() -> None:
    cpu = allowed_cpus()[-1]
    seen = _bind_in_a_new_process(cpu)
    assert {key: seen[key] for key in ("before", "after", "main")} == {"before": [cpu], "after": [cpu],
                                                                       "main": [cpu]}
    # the bound threads take turns on their CPU without preempting each other on wake-up
    assert seen["before_policy"] == seen["after_policy"] == seen["main_policy"] == os.SCHED_BATCH


def test_batch_scheduling_can_be_turned_off() -> None:
    seen = _bind_in_a_new_process(allowed_cpus()[0], **{BATCH_ENV: "off"})
    assert seen["before_policy"] == seen["after_policy"] == seen["main_policy"] == os.SCHED_OTHER


def test_current_cpu_is_one_this_process_may_run_on() -> None:
    from crawler.workers.affinity import current_cpu

    assert current_cpu() in allowed_cpus()


_CLAIM = """
import sys
from crawler.workers.affinity import claim_cpu
cpus = [int(c) for c in sys.argv[1].split(",")]
print(claim_cpu(cpus[0], cpus), flush=True)
sys.stdin.read()  # hold the claim until the test closes our standard input
"""


def test_a_cpu_another_crawl_holds_is_not_claimed_again_until_that_crawl_ends(tmp_path) -> None:
    cpus = allowed_cpus()
    env = {**os.environ, CPU_LOCKS_ENV: str(tmp_path)}

    def claim(wanted: list[int]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", _CLAIM, ",".join(map(str, wanted))], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def claimed(proc: subprocess.Popen) -> str:
        return proc.stdout.readline().strip()

    holder = claim(cpus)
    others: list[subprocess.Popen] = []
    try:
        assert claimed(holder) == str(cpus[0])
        others.append(claim(cpus))  # prefers the held CPU: takes the next one
        assert claimed(others[-1]) == (str(cpus[1]) if len(cpus) > 1 else "None")
        others.append(claim([cpus[0]]))  # only the held CPU: none, the crawl stays unbound
        assert claimed(others[-1]) == "None"
        holder.stdin.close()
        assert holder.wait(timeout=30) == 0
        others.append(claim([cpus[0]]))  # the kernel let go of the lock when its holder ended
        assert claimed(others[-1]) == str(cpus[0])
    finally:
        for proc in (holder, *others):
            if proc.poll() is None:
                proc.stdin.close()
                proc.wait(timeout=30)
