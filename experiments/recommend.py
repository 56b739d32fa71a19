#!/usr/bin/env python
"""Print top-K recommendations from a trained run, for a known user or a new one.

A thin script over :mod:`itemjax.commands.recommend` (also ``itemjax recommend`` once
the package is installed); ``python experiments/recommend.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.recommend import main

if __name__ == "__main__":
    sys.exit(run_main(main))
