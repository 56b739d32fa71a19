#!/usr/bin/env python
"""Every architecture x loss x protocol on one dataset, as one markdown table.

A thin script over :mod:`itemjax.commands.arch_table` (also ``itemjax arch-table`` once
the package is installed); ``python experiments/arch_table.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("arch-table")
