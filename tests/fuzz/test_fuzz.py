"""Every fuzz target for a small, derandomised number of examples: the same inputs on every run, in seconds.

The long runs are ``bench/fuzz.py``'s; here each target gets ``REFWATCH_FUZZ_EXAMPLES`` examples (default
100), so a change that breaks a reader on damaged input fails the normal suite. Health checks are off:
big, slow-to-generate inputs are the point.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz.tables import Case
from tests.fuzz.targets import TARGETS, PropertyViolation, check_hashlist, check_one_line, check_snapshot

EXAMPLES = int(os.environ.get("REFWATCH_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_damaged_input_is_a_clear_error_or_counted(name: str) -> None:
    target = TARGETS[name]

    @FUZZ
    @given(target.strategy)
    def run(case: Case) -> None:
        target.check(case)

    run()


# --- the property itself: it must catch what it is meant to catch ------------------------------------------------

@pytest.mark.parametrize("message", ["/x/a.csv: two\nlines", "/x/a.csv: \x1b[31mred", "/x/a.csv: \x9b2J",
                                     "/elsewhere.csv: names another file"])
def test_the_property_rejects_messages_that_are_not_one_clean_line(message: str) -> None:
    with pytest.raises(PropertyViolation):
        check_one_line(message, "/x/a.csv", "message")


def test_the_checks_report_outcomes() -> None:
    assert check_snapshot(Case("a.csv", b"url\nhttps://e.com/a.jpg\nb,c\n")).bad_records == 1
    assert check_snapshot(Case("a.csv", b"no url here\n")).kind == "error"
    assert check_hashlist(Case("l.txt", b"0" * 32 + b"\n", {"algorithm": "md5"})).references == 1
