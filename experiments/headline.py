#!/usr/bin/env python
"""README's headline table, written from finished comparisons.

A thin script over :mod:`itemjax.commands.headline` (also ``itemjax headline`` once
the package is installed); ``python experiments/headline.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("headline")
