"""``python -m crawler.workers.zygote``: a zygote process (``server.main``)."""

import sys

from crawler.workers.zygote.server import main

sys.exit(main())
