"""Errors that itemjax raises for problems the user can fix.

Every user-facing problem (bad file, bad flag, missing download) is raised as an
:class:`ItemjaxError` subclass whose message is one line naming the problem and the
fix. The command-line tools print that line and exit with status 2; a traceback
means a bug in itemjax.
"""


class ItemjaxError(Exception):
    """Base class: a problem with the user's input, data or configuration."""


class DataError(ItemjaxError, ValueError):
    """A data file is missing, unreadable, malformed or too small for the request."""


class ConfigError(ItemjaxError, ValueError):
    """An invalid option value or combination of options."""


class CheckpointError(ItemjaxError):
    """A checkpoint is missing, corrupt or incompatible with the requested run."""


class NumericalError(ItemjaxError):
    """The loss or the parameters became NaN or infinite (the command exits 3)."""


def report_error(error: BaseException, *, resume: str | None = None) -> int:
    """Say on stderr why a command stops and return its exit status (the CLI's one mapping).

    An :class:`ItemjaxError` is its one line (``error: ...``, status 2; 3 for a
    :class:`NumericalError`); Ctrl-C says how to continue (130; ``resume``, default the same
    command plus ``--resume``); anything else is a bug in
    itemjax: its traceback, status 1. Used by :func:`itemjax.cli.run_main` and by a
    multi-process run that stops one process (:func:`itemjax.parallel.distributed.stop_peers_on_error`).
    """
    import sys

    if isinstance(error, ItemjaxError):
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 3 if isinstance(error, NumericalError) else 2
    if isinstance(error, KeyboardInterrupt):
        print(f"interrupted; continue with {resume or 'the same command plus --resume'}", file=sys.stderr, flush=True)
        return 130
    import traceback

    traceback.print_exception(error, file=sys.stderr)
    sys.stderr.flush()
    return 1


def require_extra(module: str, *, extra: str, feature: str):
    """``import module``, or raise :class:`ConfigError` naming the pip extra that installs it.

    ``require_extra("tensorboardX", extra="tracking", feature="--tensorboard")``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{feature} needs the {module} package: pip install 'itemjax[{extra}]'") from None
