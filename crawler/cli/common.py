"""What every ``refwatch`` command shares: exit statuses, the default output folder, option parsers.

Every command module imports this one and nothing imports a command module back, so the commands can be
wired into ``crawler.cli.main`` or run on their own (``python -m crawler.cli.report``).
"""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_OUT = "./refwatch-data"
PERCEPTUAL_RADIUS_ALGORITHMS = ("phash", "dhash", "pdq")


class BadInput(Exception):
    """A wrong combination of options; ``main`` prints it as one ``refwatch: error:`` line, exit status 2."""


def radius(text: str) -> tuple[str, int]:
    """``ALGO=N``: a Hamming radius for phash, dhash or pdq (``--radius``)."""
    algorithm, _, number = text.partition("=")
    if algorithm not in PERCEPTUAL_RADIUS_ALGORITHMS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"expected ALGO=N with ALGO one of phash, dhash, pdq: {text!r}")
    return algorithm, int(number)


def positive(kind: type[int | float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number: {text!r}")
        return value

    return parse


def add_s3_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="S3-compatible endpoint (default: boto3's, e.g. AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--sse", choices=["AES256", "aws:kms"], default=None, help="server-side encryption of S3 writes")
    p.add_argument("--sse-kms-key-id", default=None, metavar="KEY", help="KMS key for --sse aws:kms")
