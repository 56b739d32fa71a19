#!/usr/bin/env python
"""README's headline table, written from finished comparisons.

A thin script over :mod:`itemjax.commands.headline` (also ``itemjax headline`` once
the package is installed); ``python experiments/headline.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.headline import main

if __name__ == "__main__":
    sys.exit(run_main(main))
