"""``python -m crawler.cli``: the ``refwatch`` command."""

import sys

from crawler.cli.main import main

sys.exit(main())
