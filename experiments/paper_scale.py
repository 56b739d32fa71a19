#!/usr/bin/env python
"""ITEM vs BPR at equal wall-time budgets on a paper-scale dataset: tune, then compare.

A thin script over :mod:`itemjax.commands.paper_scale` (also ``itemjax paper-scale`` once
the package is installed); ``python experiments/paper_scale.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("paper-scale")
