"""Hash lists and matching: the lists' file formats, the compiled file, the Hamming index, the matcher.

``hashlist`` is the columnar list model and its errors; ``formats`` parses the four list formats;
``compiled`` writes and memory-maps ``LIST.rwidx`` (the built indexes); ``loading`` picks the compiled file
or parses (the one entry point); ``index`` is the multi-index Hamming search with its numba ``kernels`` and
``arrayfile`` format; ``matcher`` answers "which entries lie within the radius of these hashes".

May import: numpy, numba. Nothing else of ``crawler``, never Scrapy or Twisted.
Hash-list contents are sensitive: nothing here logs a hash, an id or a label.
"""
