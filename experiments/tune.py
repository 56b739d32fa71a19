#!/usr/bin/env python
"""Tune one loss's options with Optuna: TPE sampling, pruning on validation NDCG@20, resumable.

A thin script over :mod:`itemjax.commands.tune` (also ``itemjax tune`` once
the package is installed); ``python experiments/tune.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("tune")
