"""The ``refwatch`` command line: one module per command group, wired together in ``crawler.cli.main``.

The CLI only translates options into settings or calls, and prints results; the work is in the packages
below it. It may import anything in ``crawler``; nothing imports it except the console script
(``refwatch = crawler.cli.main:main``).
"""
