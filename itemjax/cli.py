"""Shared command-line plumbing: one-line errors with exit status 2."""

from __future__ import annotations

import argparse
import sys

from itemjax.errors import ItemjaxError


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2.

    Abbreviated flags are refused (``--epoch`` is not silently ``--epochs``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main, argv=None) -> int:
    """Call ``main(argv)``; turn :class:`ItemjaxError` into one line on stderr and exit 2.

    A NaN loss (``NumericalError``) exits 3; Ctrl-C exits 130 after saying where the run is.
    """
    from itemjax.training import NumericalError

    try:
        return main(argv) or 0
    except NumericalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except ItemjaxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130


def int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values
