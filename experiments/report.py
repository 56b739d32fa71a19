#!/usr/bin/env python
"""Turn finished run directories into a markdown table and a comparison plot.

A thin script over :mod:`itemjax.commands.report` (also ``itemjax report`` once
the package is installed); ``python experiments/report.py --help`` lists the options.
"""

import sys

from itemjax.cli import run_main
from itemjax.commands.report import main

if __name__ == "__main__":
    sys.exit(run_main(main))
