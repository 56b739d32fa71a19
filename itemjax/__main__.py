"""``python -m itemjax <command>``: the same as the ``itemjax`` console script."""

import sys

from itemjax.commands import main

sys.exit(main())
