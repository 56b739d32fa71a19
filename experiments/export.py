#!/usr/bin/env python
"""Export a finished run for serving: embeddings with original ids and every user's top-K.

A thin script over :mod:`itemjax.commands.export` (also ``itemjax export`` once
the package is installed); ``python experiments/export.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.export import main

if __name__ == "__main__":
    sys.exit(run_main(main))
