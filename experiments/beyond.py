#!/usr/bin/env python
"""Beyond the paper: ITEM vs BPR with side features, on cold-start items and under temporal splits.

A thin script over :mod:`itemjax.commands.beyond` (also ``itemjax beyond`` once
the package is installed); ``python experiments/beyond.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("beyond")
