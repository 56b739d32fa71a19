#!/usr/bin/env python
"""Print top-K recommendations from a trained run, for a known user or a new one.

A thin script over :mod:`itemjax.commands.recommend` (also ``itemjax recommend`` once
the package is installed); ``python experiments/recommend.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("recommend")
