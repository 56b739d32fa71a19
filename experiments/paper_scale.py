#!/usr/bin/env python
"""ITEM vs BPR at equal wall-time budgets on a paper-scale dataset: tune, then compare.

A thin script over :mod:`itemjax.commands.paper_scale` (also ``itemjax paper-scale`` once
the package is installed); ``python experiments/paper_scale.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.paper_scale import main

if __name__ == "__main__":
    sys.exit(run_main(main))
