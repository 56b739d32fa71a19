#!/usr/bin/env python
"""Turn finished run directories into a markdown table and a comparison plot.

A thin script over :mod:`itemjax.commands.report` (also ``itemjax report`` once
the package is installed); ``python experiments/report.py --help`` lists the options.
"""

from itemjax.commands import script

if __name__ == "__main__":
    script("report")
