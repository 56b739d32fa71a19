"""The ``itemjax`` command: ``itemjax <command> [options]``.

    itemjax train --model lightgcn --loss item      # one run (itemjax.commands.train)
    itemjax compare --seeds 0,1,2                  # losses side by side over seeds
    itemjax sweep --base "--loss item" --variant "--tau 0.2" --out runs/sweep
    itemjax arch-table                             # every model x loss x protocol
    itemjax recommend RUN --user 196               # top-K from a saved run
    itemjax report RUN [RUN ...]                   # markdown summary of runs
    itemjax export RUN --out DIR -k 50             # embeddings + every user's top-K for serving
    itemjax tune --loss item --trials 20 --out runs/tune-item   # Optuna search, resumable
    itemjax methods --out runs/methods-ml100k      # every loss / sampler / SSL method, equal tuning budget
    itemjax paper-scale --dataset yelp2018 --out runs/paper-yelp2018   # tune, then equal budgets
    itemjax beyond --out runs/beyond-ml100k        # side features, cold-start items, temporal splits
    itemjax headline experiments/headline.json --readme README.md   # README's table from the comparisons

Each command's logic is the module of the same name in this package (``main(argv)`` and
``parser()``, and ``RESUME`` if an interrupted run continues otherwise than with
``--resume``); ``experiments/<command>.py`` are thin scripts that call the same ``main``.
"""

from __future__ import annotations

import importlib
import os
import sys

#: command name -> module of itemjax.commands
COMMANDS = {"train": "train", "compare": "compare", "sweep": "sweep", "arch-table": "arch_table",
            "recommend": "recommend", "report": "report", "export": "export", "tune": "tune", "methods": "methods",
            "paper-scale": "paper_scale", "beyond": "beyond",
            "headline": "headline"}


def script(command: str) -> None:
    """Entry point of ``experiments/<command>.py``: ``itemjax <command>`` with this process's arguments
    (so with the command's ``RESUME`` advice on Ctrl-C); exits with its status."""
    sys.exit(main([command, *sys.argv[1:]]))


def main(argv=None) -> int:
    """Dispatch ``itemjax <command> ...`` to ``itemjax.commands.<command>.main``. Output piped into a
    reader that stops early (``itemjax --help | head``) ends quietly, as Unix tools do."""
    try:
        return _dispatch(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # the reader has gone: point stdout at /dev/null so that Python's flush at exit does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _dispatch(argv: list) -> int:
    from itemjax.cli import run_main

    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\ncommands: " + ", ".join(COMMANDS)
              + "\n\n`itemjax <command> --help` lists a command's options.")
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"itemjax: error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"itemjax.commands.{COMMANDS[name]}")
    return run_main(module.main, argv[1:], resume=getattr(module, "RESUME", None))
