"""Shared command-line plumbing: one-line errors with exit status 2, and the training flags
generated from :class:`itemjax.config.TrainConfig` (each option is declared once, there)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

from itemjax.errors import ItemjaxError, report_error


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2.

    Abbreviated flags are refused (``--epoch`` is not silently ``--epochs``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


#: how a command that trains a table of runs continues after an interruption (its ``RESUME``)
RERUN = "the same command: finished runs are reused, an interrupted one resumes"


def run_main(main, argv=None, *, resume: str | None = None) -> int:
    """Call ``main(argv)``; turn :class:`ItemjaxError` into one line on stderr and exit 2.

    A NaN loss (``NumericalError``) exits 3; Ctrl-C exits 130 after saying how to continue
    (``resume``, a command module's ``RESUME``; default: the same command plus ``--resume``).
    """
    try:
        return main(argv) or 0
    except (ItemjaxError, KeyboardInterrupt) as e:
        return report_error(e, resume=resume)


def int_list(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


_PARSERS = {"int": int, "float": float, "str": str}


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, config_cls=None) -> None:
    """Add one flag per field of ``config_cls`` (default :class:`~itemjax.config.TrainConfig`),
    grouped, with the field's help, choices and type (bool: ``--x/--no-x``; tuple: comma-separated
    integers; ``Optional[T]``: T, default None), plus ``--config FILE``.

    Every flag's argparse default is ``SUPPRESS``: only the flags actually given land in the
    namespace, so :func:`config_from_args` can layer them over a ``--config`` file and the
    dataclass defaults.
    """
    from itemjax.config import TrainConfig

    config_cls = config_cls or TrainConfig
    defaults = config_cls()
    groups = {}
    for field in dataclasses.fields(config_cls):
        meta = field.metadata
        group = groups.get(meta.get("group"))
        if group is None:
            group = groups[meta.get("group")] = parser.add_argument_group(meta.get("group"))
        kind = str(field.type).replace("Optional[", "").rstrip("]")
        default = getattr(defaults, field.name)
        help_text = meta.get("help", "")
        if default is not None and kind != "bool":
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        kwargs = dict(dest=field.name, default=argparse.SUPPRESS, help=help_text)
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] += f" (default: {'on' if default else 'off'})"
        elif kind == "tuple":
            kwargs["type"] = int_list
        else:
            kwargs["type"] = _PARSERS[kind]
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        group.add_argument(_flag(field), **kwargs)
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="start from the options of FILE (a run's config.json, or TOML with the option names as "
                             "keys); flags given beside it override it; its out and resume are not taken")


def read_config_file(path) -> dict:
    """Options of a run's ``config.json`` (its ``"config"`` part) or of a TOML file.

    ``out`` and ``resume`` are dropped (a new run gets its own directory); an unknown option
    raises :class:`~itemjax.errors.ConfigError` naming it.
    """
    from itemjax.config import TrainConfig
    from itemjax.errors import ConfigError

    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file; pass a run's config.json or a TOML file")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError("--config FILE.toml needs Python >= 3.11 (tomllib); pass a config.json instead") from None
        values = tomllib.loads(text)
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
        values = values.get("config", values)
    values = {k: v for k, v in values.items() if k not in ("out", "resume")}
    TrainConfig.from_dict(values, strict=True, where=f"--config {path}")  # names every unknown option
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def config_from_args(args: argparse.Namespace, config_cls=None):
    """The resolved config: dataclass defaults, then ``--config`` FILE, then the flags given."""
    from itemjax.config import TrainConfig

    config_cls = config_cls or TrainConfig
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    base = read_config_file(args.config) if getattr(args, "config", None) else {}
    return config_cls(**{**base, **given}).resolve()
