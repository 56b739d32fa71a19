#!/usr/bin/env python
"""Compare BPR and ITEM (or any losses) on one dataset and model over several seeds.

A thin script over :mod:`itemjax.commands.compare` (also ``itemjax compare`` once
the package is installed); ``python experiments/compare.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("compare")
