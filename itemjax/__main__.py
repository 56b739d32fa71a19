"""``python -m itemjax <command>``: the same as the ``itemjax`` console script."""

from itemjax.commands import entry

entry()
