"""The pixel budget the hashing threads share (crawler/hashing/budget.py), with plain threads, and its use
around the decode in ``hash_bytes``: waiting, first come first served, an over-budget image alone, no
deadlock, pixels given back however a decode ends."""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable

import pytest
from PIL import Image

from crawler.hashing.budget import PixelBudget
from crawler.hashing.digest import DEFAULT_MAX_PIXELS, decode_cost, hash_bytes, pixel_limit

DEADLINE = 10.0  # seconds any wait in these tests may take before it counts as a hang


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.005)


class _Holder:
    """A thread that reserves ``pixels``, notes when it got them, and holds them until ``release()``."""

    def __init__(self, budget: PixelBudget, pixels: int, log: list[str], name: str) -> None:
        self._go = threading.Event()
        self.admitted = threading.Event()

        def run() -> None:
            with budget.reserve(pixels):
                log.append(name)
                self.admitted.set()
                assert self._go.wait(DEADLINE)

        self.thread = threading.Thread(target=run, name=f"holder-{name}", daemon=True)
        self.thread.start()

    def release(self) -> None:
        self._go.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive()


def test_a_reservation_that_fits_is_immediate_and_given_back() -> None:
    budget = PixelBudget(100)
    with budget.reserve(60):
        assert budget.in_flight == 60
        with budget.reserve(40):  # another decode beside it: exactly fits
            assert budget.in_flight == 100
    assert budget.in_flight == 0
    stats = budget.stats()
    assert (stats.waits, stats.peak_pixels, stats.alone) == (0, 100, 0)


def test_an_image_that_does_not_fit_waits_for_pixels_to_come_back() -> None:
    budget, log = PixelBudget(100), []
    first = _Holder(budget, 60, log, "first")
    assert first.admitted.wait(DEADLINE)
    second = _Holder(budget, 50, log, "second")
    _until(lambda: budget.waiting == 1)
    assert not second.admitted.is_set() and budget.in_flight == 60
    first.release()
    assert second.admitted.wait(DEADLINE)
    assert budget.in_flight == 50
    second.release()
    assert budget.in_flight == 0 and log == ["first", "second"]
    assert budget.stats().waits == 1 and budget.stats().wait_seconds > 0


def test_a_big_image_is_not_starved_by_small_ones_that_would_fit() -> None:
    """First come, first served: small images arriving after a waiting big one queue behind it, although
    they would fit beside what is in flight."""
    budget, log = PixelBudget(100), []
    small = _Holder(budget, 40, log, "small-1")
    assert small.admitted.wait(DEADLINE)
    big = _Holder(budget, 100, log, "big")
    _until(lambda: budget.waiting == 1)
    later = _Holder(budget, 40, log, "small-2")  # 40 + 40 <= 100, but the big one came first
    _until(lambda: budget.waiting == 2)
    assert not later.admitted.is_set()
    small.release()
    assert big.admitted.wait(DEADLINE)
    assert not later.admitted.is_set()
    big.release()
    assert later.admitted.wait(DEADLINE)
    later.release()
    assert log == ["small-1", "big", "small-2"]


def test_an_image_larger_than_the_budget_is_decoded_alone() -> None:
    budget, log = PixelBudget(100), []
    small = _Holder(budget, 10, log, "small")
    assert small.admitted.wait(DEADLINE)
    huge = _Holder(budget, 500, log, "huge")  # over the budget: waits for everything in flight...
    _until(lambda: budget.waiting == 1)
    small.release()
    assert huge.admitted.wait(DEADLINE)  # ...then runs, never refused
    tiny = _Holder(budget, 1, log, "tiny")  # and nothing starts beside it
    _until(lambda: budget.waiting == 1)
    assert not tiny.admitted.is_set() and budget.in_flight == 500
    huge.release()
    assert tiny.admitted.wait(DEADLINE)
    tiny.release()
    assert log == ["small", "huge", "tiny"] and budget.in_flight == 0
    assert budget.stats().alone == 1 and budget.stats().peak_pixels == 500


def test_pixels_come_back_when_the_decode_raises() -> None:
    budget = PixelBudget(100)
    with pytest.raises(RuntimeError, match="decoder blew up"), budget.reserve(80):
        raise RuntimeError("decoder blew up")
    assert budget.in_flight == 0
    with budget.reserve(100):  # the whole budget is there again, at once
        pass
    assert budget.stats().waits == 0


def test_a_waiter_that_fails_while_waiting_leaves_the_line() -> None:
    """An exception inside the wait (an interrupted thread) takes its ticket out of the line, so those
    behind it are not stuck behind a reservation that will never come."""
    budget, log = PixelBudget(100), []
    holder = _Holder(budget, 100, log, "holder")
    assert holder.admitted.wait(DEADLINE)
    failed: list[BaseException] = []
    real_wait = budget._lock.wait
    broken = threading.Event()

    def wait_once_broken(timeout: float | None = None) -> bool:
        if threading.current_thread().name == "broken" and not broken.is_set():
            broken.set()
            raise KeyboardInterrupt
        return real_wait(timeout)

    budget._lock.wait = wait_once_broken  # type: ignore[method-assign]

    def reserve_broken() -> None:
        try:
            with budget.reserve(50):
                log.append("broken")
        except KeyboardInterrupt as exc:
            failed.append(exc)

    broken_thread = threading.Thread(target=reserve_broken, name="broken", daemon=True)
    broken_thread.start()
    broken_thread.join(DEADLINE)
    assert failed and budget.waiting == 0
    after = _Holder(budget, 50, log, "after")
    _until(lambda: budget.waiting == 1)
    holder.release()
    assert after.admitted.wait(DEADLINE)
    after.release()
    assert log == ["holder", "after"] and budget.in_flight == 0


def test_many_threads_never_deadlock_nor_exceed_the_budget() -> None:
    """Threads reserving random sizes (some over the whole budget) all finish, and at no moment are more
    pixels held than the budget, unless a single over-budget image is held alone."""
    budget = PixelBudget(1000)
    lock = threading.Lock()
    holding: list[int] = []
    violations: list[list[int]] = []
    done = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(40):
            pixels = rng.choice([1, 50, 300, 700, 1000, 2500])
            with budget.reserve(pixels):
                with lock:
                    holding.append(pixels)
                    if sum(holding) > 1000 and len(holding) > 1:
                        violations.append(list(holding))
                time.sleep(rng.random() * 0.001)
                with lock:
                    holding.remove(pixels)
        done.append(seed)

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 3)
    assert sorted(done) == list(range(8)), "some threads never finished: deadlock"
    assert violations == []
    assert budget.in_flight == 0 and budget.waiting == 0


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1 pixel"):
        PixelBudget(0)
    with pytest.raises(ValueError, match="negative"), PixelBudget(10).reserve(-1):
        pass


# --- around the decode in hash_bytes ------------------------------------------------------------------------


def _encode(img: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **params)
    return out.getvalue()


def _cost(body: bytes) -> int:
    with Image.open(io.BytesIO(body)) as img:
        return decode_cost(img)


def test_decode_cost_weighs_pixels_by_the_memory_their_mode_and_format_need() -> None:
    rgb = Image.new("RGB", (300, 200), (10, 120, 200))
    assert _cost(_encode(rgb, "PNG")) == 60_000  # the unit: an RGB pixel
    assert _cost(_encode(rgb.convert("L"), "PNG")) == 30_000
    assert _cost(_encode(rgb.convert("RGBA"), "PNG")) == 110_000
    assert _cost(_encode(rgb, "JPEG")) == 60_000
    assert _cost(_encode(rgb, "JPEG", progressive=True)) == 100_000  # libjpeg keeps every coefficient
    assert _cost(_encode(rgb, "WEBP")) == 160_000  # decoded into libwebp's buffer, then copied


def test_hash_bytes_waits_for_the_budget_then_decodes() -> None:
    body = _encode(Image.new("RGB", (120, 80), (200, 40, 40)), "PNG")
    budget = PixelBudget(10_000)
    results = []
    with budget.reserve(10_000):  # another decode holds the whole budget
        thread = threading.Thread(target=lambda: results.append(hash_bytes(body, decode_budget=budget)))
        thread.start()
        _until(lambda: budget.waiting == 1)
        assert not results
    thread.join(DEADLINE)
    assert results and results[0].decodable and results[0].phash == hash_bytes(body).phash
    assert budget.in_flight == 0 and budget.stats().waits == 1
    assert budget.stats().peak_pixels == 10_000  # 9,600 for the image, never beside the holder's


def test_an_image_over_the_budget_but_within_the_pixel_limit_is_still_hashed() -> None:
    body = _encode(Image.new("RGB", (400, 300), (40, 200, 40)), "PNG")
    budget = PixelBudget(1000)
    digest = hash_bytes(body, decode_budget=budget, max_pixels=200_000)
    assert digest.decodable and digest.decode_error is None
    assert budget.stats().alone == 1 and budget.in_flight == 0


def test_the_budget_is_given_back_when_decoding_fails() -> None:
    body = _encode(Image.new("RGB", (200, 200), (40, 40, 200)), "PNG")
    budget = PixelBudget(100_000)
    digest = hash_bytes(body[: len(body) // 2], decode_budget=budget)  # truncated: load() raises
    assert digest.decode_error is not None and digest.width == 200
    assert budget.in_flight == 0 and budget.stats().peak_pixels == 40_000


def test_images_over_the_pixel_limit_or_not_decoded_never_touch_the_budget() -> None:
    body = _encode(Image.new("RGB", (400, 300)), "PNG")
    budget = PixelBudget(1)
    assert "over the limit" in (hash_bytes(body, max_pixels=1000, decode_budget=budget).decode_error or "")
    assert hash_bytes(body, algorithms=("md5",), decode_budget=budget).width == 400  # header only
    assert hash_bytes(b"not an image", decode_budget=budget).decode_error is not None
    assert budget.stats().peak_pixels == 0


def _limit(body: bytes, max_pixels: int) -> int:
    with Image.open(io.BytesIO(body)) as img:
        return pixel_limit(img, max_pixels)


def test_heavy_formats_have_a_pixel_limit_lowered_in_proportion_to_their_cost() -> None:
    """No image may cost more than ``max_pixels`` RGB pixels to decode: an RGBA WebP (21 bytes a pixel against
    RGB's 6) of 60,000 pixels needs a limit of 210,000; one pixel less and it is decode_error, never decoded,
    with the reason; an RGB or greyscale image keeps the whole limit."""
    rgba = Image.new("RGBA", (300, 200), (10, 120, 200, 128))
    webp = _encode(rgba, "WEBP")
    assert _cost(webp) == 210_000 and _limit(webp, 210_000) == 60_000
    budget = PixelBudget(1)
    assert hash_bytes(webp, max_pixels=210_000, decode_budget=budget).decodable
    refused = hash_bytes(webp, max_pixels=209_999, decode_budget=budget)
    assert (refused.width, refused.height, refused.image_format, refused.phash) == (300, 200, "WEBP", None)
    assert refused.decode_error == ("image has 60000 pixels, over the limit of 59999 for WEBP RGBA, which needs "
                                    "21 bytes a pixel to decode (RGB: 6 bytes, 209999 pixels)")
    assert budget.stats().peak_pixels == 210_000  # the refused one never reserved anything
    progressive = _encode(rgba.convert("RGB"), "JPEG", progressive=True)
    assert "for progressive JPEG RGB" in (hash_bytes(progressive, max_pixels=99_999).decode_error or "")
    assert hash_bytes(progressive, max_pixels=100_000).decodable
    for lighter in (rgba.convert("RGB"), rgba.convert("L")):  # the whole limit
        assert hash_bytes(_encode(lighter, "PNG"), max_pixels=60_000).decodable
        assert _limit(_encode(lighter, "PNG"), 60_000) == 60_000
    assert hash_bytes(webp, max_pixels=209_999, algorithms=("md5",)).decode_error == refused.decode_error


def test_at_the_default_limit_the_heaviest_image_costs_no_more_than_the_largest_rgb_one() -> None:
    """The limits at the default 48 M, by what each needs a pixel at the peak: the worst legal image of each
    format fits the decode budget alone (tests/test_memory.py measures them in real crawls)."""
    rgb = Image.new("RGB", (30, 20), (1, 2, 3))
    rgba = Image.new("RGBA", (30, 20), (1, 2, 3, 128))  # translucent: an opaque WebP is stored as RGB
    limits = {
        "PNG RGB": _limit(_encode(rgb, "PNG"), DEFAULT_MAX_PIXELS),
        "PNG L": _limit(_encode(rgb.convert("L"), "PNG"), DEFAULT_MAX_PIXELS),
        "PNG RGBA": _limit(_encode(rgba, "PNG"), DEFAULT_MAX_PIXELS),
        "JPEG CMYK": _limit(_encode(rgb.convert("CMYK"), "JPEG"), DEFAULT_MAX_PIXELS),
        "progressive JPEG": _limit(_encode(rgb, "JPEG", progressive=True), DEFAULT_MAX_PIXELS),
        "WEBP RGB": _limit(_encode(rgb, "WEBP"), DEFAULT_MAX_PIXELS),
        "WEBP RGBA": _limit(_encode(rgba, "WEBP"), DEFAULT_MAX_PIXELS),
        "JPEG2000 RGBA": _limit(_encode(rgba, "JPEG2000"), DEFAULT_MAX_PIXELS),
    }
    assert limits == {"PNG RGB": 48_000_000, "PNG L": 48_000_000, "PNG RGBA": 26_181_818,
                      "JPEG CMYK": 22_153_846, "progressive JPEG": 28_800_000, "WEBP RGB": 18_000_000,
                      "WEBP RGBA": 13_714_285, "JPEG2000 RGBA": 11_520_000}
