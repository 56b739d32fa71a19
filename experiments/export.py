#!/usr/bin/env python
"""Export a finished run for serving: embeddings with original ids and every user's top-K.

A thin script over :mod:`itemjax.commands.export` (also ``itemjax export`` once
the package is installed); ``python experiments/export.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("export")
