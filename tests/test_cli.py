"""Bad input to ``experiments/train.py``: exit status 2 and one line that names the problem.

``main`` runs in-process through :func:`itemjax.cli.run_main` (what ``__main__`` calls), so
each case costs milliseconds. Flag problems must be rejected before any data is read: for
those cases ``load_dataset`` is replaced by a function that fails the test if called.
"""

from __future__ import annotations

import gzip
import pathlib
import subprocess
import sys

import pytest

from itemjax.cli import run_main



def _load_train():
    from itemjax.commands import train

    return train


train = _load_train()


def run_cli(argv, capsys):
    """``(exit status, stderr)`` of ``train.py argv`` run in-process."""
    try:
        status = run_main(train.main, argv)
    except SystemExit as e:  # argparse errors exit from inside parse_args
        status = e.code
    return status, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one error line of stderr (after optional dataset statistics lines)."""
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    assert stderr.rstrip("\n").splitlines()[-1] == lines[0], "the error must be the last line, no traceback"
    return lines[0]


@pytest.fixture
def no_data_loading(monkeypatch):
    """Make any attempt to read data fail the test."""
    import itemjax.data.datasets

    def forbidden(*args, **kwargs):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(itemjax.data.datasets, "load_dataset", forbidden)


# (case, argv, words the message must contain). A dataset path is never read for these.
FLAG_CASES = [
    ("unknown model", ["--model", "transformer"], ["--model", "invalid choice", "'transformer'"]),
    ("unknown loss", ["--loss", "hinge"], ["--loss", "invalid choice", "'hinge'"]),
    ("negative epochs", ["--epochs", "-3"], ["--epochs must be >= 1", "-3"]),
    ("zero dim", ["--dim", "0"], ["--dim must be >= 1", "0"]),
    ("ppr window reversed", ["--ppr-window", "100,10"], ["--ppr-window", "LO < HI", "100,10"]),
    ("ppr window one value", ["--ppr-window", "10"], ["--ppr-window", "two ranks", "10"]),
    ("ppr window not numbers", ["--ppr-window", "a,b"], ["--ppr-window", "integers", "'a,b'"]),
    ("unknown ppr backend", ["--ppr-backend", "gpu"], ["--ppr-backend", "invalid choice", "'gpu'"]),
    ("resume without out", ["--resume"], ["--resume needs --out"]),
    ("curriculum with uniform negatives", ["--curriculum", "5", "--neg-sampler", "uniform"],
     ["--curriculum", "--neg-sampler ppr or mixed"]),
    ("select metric K not in ks", ["--select-metric", "ndcg@30"], ["--select-metric", "'ndcg@30'", "--ks"]),
    ("test fraction out of range", ["--test-frac", "1.5"], ["--test-frac", "(0, 1)", "1.5"]),
    ("zero learning rate", ["--lr", "0"], ["--lr must be > 0"]),
    ("user dropout of 1", ["--user-dropout", "1"], ["--user-dropout", "[0, 1)", "1.0"]),
    ("unknown rank estimate", ["--rank-estimate", "full"], ["--rank-estimate", "invalid choice", "'full'"]),
    ("unknown flag", ["--learning-rate", "0.1"], ["unrecognized arguments", "--learning-rate"]),
    ("zero time budget", ["--time-budget", "0"], ["--time-budget must be > 0"]),
    ("refit without validation", ["--refit", "--valid-frac", "0"], ["--refit", "--valid-frac > 0"]),
    ("unknown positive pairs", ["--positive-pairs", "soft"], ["--positive-pairs", "invalid choice", "'soft'"]),
    ("missing config file", ["--config", "/nonexistent/config.json"], ["--config", "no such file"]),
    ("process id without distributed", ["--process-id", "1"], ["--process-id", "add --distributed"]),
    ("process id beyond the count", ["--distributed", "--num-processes", "2", "--process-id", "2"],
     ["--process-id must be below --num-processes 2", "(got 2)"]),
    ("distributed without out", ["--distributed"], ["--distributed needs --out", "every process"]),
    ("zero heartbeat timeout", ["--heartbeat-timeout", "0"], ["--heartbeat-timeout must be >= 1"]),
]


def test_config_file_with_an_unknown_option_names_it(tmp_path, capsys, no_data_loading):
    bad = tmp_path / "run.toml"
    bad.write_text('model = "lightgcn"\nlearning_rate = 0.1\n')
    status, err = run_cli(["--config", str(bad)], capsys)
    assert status == 2 and "unknown option 'learning_rate'" in error_line(err)


def test_toml_config_and_flags_layer_over_the_defaults(tmp_path):
    good = tmp_path / "run.toml"
    good.write_text('loss = "item"\ntau = 0.2\nks = [5, 20]\nout = "ignored"\n')
    config = train.config_from_args(train.parser().parse_args(["--config", str(good), "--tau", "0.4"]))
    assert (config.loss, config.tau, config.ks, config.out) == ("item", 0.4, (5, 20), None)
    assert config.lr == 5e-3  # ITEM's default, resolved after the file


@pytest.mark.parametrize("case,argv,words", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_bad_flags_exit_2_before_any_data_is_read(case, argv, words, no_data_loading, capsys, tmp_path):
    without_out = case in ("resume without out", "distributed without out")
    argv = argv + ["--no-progress"] + ([] if without_out else ["--out", str(tmp_path / "run")])
    status, err = run_cli(["--dataset", str(tmp_path / "never-read.csv"), *argv], capsys)
    assert status == 2, err
    line = error_line(err)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "run").exists(), "a rejected command must not create its run directory"


def test_existing_run_without_resume_is_rejected_before_loading(no_data_loading, capsys, tmp_path):
    (tmp_path / "run" / "checkpoints" / "latest").mkdir(parents=True)
    status, err = run_cli(["--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert status == 2
    assert "already holds a run; pass --resume" in error_line(err)


# ----------------------------------------------------------------------------- bad data files


def _write(path: pathlib.Path, content) -> pathlib.Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


# (case, file name, content, words the message must contain: "{path}" is the file's path)
DATA_CASES = [
    ("missing file", "absent.csv", None, ["{path}", "neither a known dataset nor an existing file"]),
    ("empty file", "empty.csv", b"", ["{path}", "file is empty"]),
    ("blank lines only", "blank.csv", "\n  \n\n", ["{path}", "empty"]),
    ("header only", "header.csv", "user,item\n", ["{path}", "only a header line"]),
    ("binary file", "binary.csv", bytes(range(256)) * 4, ["{path}:", "binary data, not a text file"]),
    ("missing item column", "nocol.csv", "user,rating\nu1,3\nu2,4\n", ["{path}:1", "no item column"]),
    ("single column", "onecol.csv", "u1\nu2\n", ["{path}", "column"]),
    ("malformed line", "malformed.csv", "user,item\nu1,i1\nu2,i2,5,7,9\nu3,i3\n",
     ["{path}:3", "expected 2 columns", "found 5"]),
    ("empty id", "emptyid.csv", "user,item\nu1,i1\nu2,\n", ["{path}:3", "empty item id"]),
    ("rating not a number", "rating.csv", "u1,i1,5\nu1,i2,abc\n", ["{path}:2", "rating 'abc' is not a number"]),
    ("gz that is not gzip", "fake.csv.gz", "u1,i1\n", ["{path}", "not gzip-compressed"]),
    ("corrupt gzip", "trunc.csv.gz", gzip.compress(b"u1,i1\n" * 500)[:40], ["{path}", "corrupt or truncated gzip"]),
    ("too few interactions for the split", "few.csv", "user,item\nu1,i1\nu1,i2\nu2,i1\n",
     ["few", "nothing can be held out"]),
    ("unknown registry dataset", None, None, ["'ml-10m'", "neither a known dataset nor an existing file"]),
]


@pytest.mark.parametrize("case,name,content,words", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_exit_2_with_file_and_line(case, name, content, words, capsys, tmp_path):
    if name is None:
        dataset = "ml-10m"
    else:
        dataset = str(tmp_path / name)
        if content is not None:
            _write(tmp_path / name, content)
    extra = ["--min-rating", "3"] if case == "rating not a number" else []
    status, err = run_cli(["--dataset", dataset, *extra, "--no-progress", "--epochs", "1", "--dim", "4",
                           "--out", str(tmp_path / "run")], capsys)
    assert status == 2, err
    line = error_line(err)
    for word in words:
        assert word.format(path=dataset) in line, (word, line)


def test_resume_of_a_directory_that_is_not_a_run(capsys, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "stray").write_text("")
    status, err = run_cli(["--resume", "--out", str(tmp_path / "run"), "--no-progress"], capsys)
    assert status == 2
    assert "is not a run directory (no config.json)" in error_line(err)


def test_itemjax_command_dispatches_to_each_command(capsys):
    from itemjax.commands import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as exit_:
            main([name, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: itemjax {name}")
    assert main(["fit"]) == 2 and "unknown command 'fit'" in capsys.readouterr().err


def test_output_into_a_closed_pipe_ends_quietly():
    """``itemjax --help | head -0``: the reader is gone before the help is written; no traceback, status 1."""
    proc = subprocess.Popen([sys.executable, "-m", "itemjax", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # long before the child has imported itemjax and printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_ctrl_c_says_how_to_continue(monkeypatch, capsys):
    """A single run continues with --resume; a table command (sweep, tune, ...) with the same command."""
    import itemjax.commands as commands
    from itemjax.cli import RERUN
    from itemjax.commands import sweep

    def interrupted(argv=None):
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert capsys.readouterr().err.strip() == "interrupted; continue with the same command plus --resume"
    monkeypatch.setattr(sweep, "main", interrupted)
    assert commands.main(["sweep", "--out", "x"]) == 130
    assert capsys.readouterr().err.strip() == f"interrupted; continue with {RERUN}"


def test_options_a_run_does_not_read_are_no_difference():
    from itemjax.config import TrainConfig, config_diff

    uniform = TrainConfig(loss="bpr", neg_sampler="uniform").to_dict()
    # a BPR run with uniform negatives never reads the PPR options: a changed default does not block --resume
    assert config_diff({**uniform, "ppr_eps": 1e-5, "ppr_alpha": 0.3}, {**uniform, "ppr_eps": 2e-6}) == {}
    push = TrainConfig(loss="item", neg_sampler="ppr", ppr_backend="push").to_dict()
    assert config_diff({**push, "ppr_eps": 1e-5}, {**push, "ppr_eps": 2e-6}) == {"ppr_eps": (2e-6, 1e-5)}
    device = {**push, "ppr_backend": "device"}
    assert config_diff({**device, "ppr_eps": 1e-5}, {**device, "ppr_eps": 2e-6}) == {}  # only the push reads it
    assert config_diff({**device, "hard_ratio": 0.3}, device) == {}  # only --neg-sampler mixed reads it
    mixed = {**device, "neg_sampler": "mixed"}
    assert config_diff({**mixed, "hard_ratio": 0.3}, mixed) == {"hard_ratio": (0.5, 0.3)}
    # a changed sampler is a difference, and so are the PPR options the saved run read
    assert config_diff({**uniform, "ppr_alpha": 0.3}, {**uniform, "neg_sampler": "ppr"}) == {
        "neg_sampler": ("ppr", "uniform"), "ppr_alpha": (0.15, 0.3)}
