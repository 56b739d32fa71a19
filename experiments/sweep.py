#!/usr/bin/env python
"""Run a list of train.py variants and tabulate them by VALIDATION NDCG@20.

A thin script over :mod:`itemjax.commands.sweep` (also ``itemjax sweep`` once
the package is installed); ``python experiments/sweep.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("sweep")
