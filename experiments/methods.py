#!/usr/bin/env python
"""The training methods side by side: each tuned with the same budget, then over several seeds.

A thin script over :mod:`itemjax.commands.methods` (also ``itemjax methods`` once
the package is installed); ``python experiments/methods.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("methods")
