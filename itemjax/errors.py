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


def require_extra(module: str, *, extra: str, feature: str):
    """``import module``, or raise :class:`ConfigError` naming the pip extra that installs it.

    ``require_extra("tensorboardX", extra="tracking", feature="--tensorboard")``.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{feature} needs the {module} package: pip install 'itemjax[{extra}]'") from None
