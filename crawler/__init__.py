"""refwatch: re-check the image references of web-scale datasets.

The package is the Scrapy project (settings, items, pipelines, extensions) plus the plain, reactor-free
modules it is built on: snapshot readers, hashing, hash lists and matching, events and the event queue.
"""

__version__ = "0.1.0"
