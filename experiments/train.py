#!/usr/bin/env python
"""Train a recommender and evaluate it with full ranking.

A thin script over :mod:`itemjax.commands.train` (also ``itemjax train`` once
the package is installed); ``python experiments/train.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("train")
