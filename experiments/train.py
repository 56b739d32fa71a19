#!/usr/bin/env python
"""Train a recommender and evaluate it with full ranking.

A thin script over :mod:`itemjax.commands.train` (also ``itemjax train`` once
the package is installed); ``python experiments/train.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.train import main

if __name__ == "__main__":
    sys.exit(run_main(main))
