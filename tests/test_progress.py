"""Progress off a terminal: whole lines at an interval and at the end, never a bar redrawn with \\r."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest
from tqdm.auto import tqdm

from sounding import progress
from sounding.config import Params
from sounding.data.prepare import load_prepared
from sounding.training import fit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _wait_for(buffer: io.StringIO, text: str) -> None:
    deadline = time.monotonic() + 30
    while text not in buffer.getvalue():
        assert time.monotonic() < deadline, f"no {text!r} in {buffer.getvalue()!r}"
        time.sleep(0.01)


def test_off_a_terminal_work_prints_a_line_at_each_interval_and_one_at_the_end(monkeypatch) -> None:
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    bar = progress.bar(3, "tune cnn", "trial")
    assert isinstance(bar, progress.Lines)
    bar.update(1)
    _wait_for(err, "tune cnn: 1/3 trials [")  # the timer's line, with no further update
    bar.update(2)
    bar.set_postfix({"best val/acc": "0.953"})
    bar.close()
    bar.close()  # a second close adds nothing
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue() and ", ," not in err.getvalue()
    assert lines[-1].startswith("tune cnn: 3/3 trials [") and lines[-1].endswith(", best val/acc 0.953]")
    assert sum(line.startswith("tune cnn: 3/3") for line in lines) == 1


def test_on_a_terminal_it_is_tqdm_s_bar_and_quiet_prints_nothing(monkeypatch) -> None:
    monkeypatch.setattr("sys.stderr", Terminal())
    with progress.bar(2, "depth study", "config") as on_tty:
        assert isinstance(on_tty, tqdm) and not on_tty.disable
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    quiet = progress.bar(2, "depth study", "config", enabled=False)
    quiet.update(2)
    quiet.close()
    assert err.getvalue() == ""


def test_a_fit_off_a_terminal_prints_its_epochs_and_latest_figures(
    params: Params, prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Every epoch's end is past the interval, however fast the epochs (the smallest the variable allows,
    # 0.01 s, is longer than an epoch of this tiny set on a fast machine: epoch 1 went unprinted in CI).
    monkeypatch.setattr(progress, "interval_s", lambda: 0.0)
    fit(params, "mlp", 7, load_prepared(prepared), tmp_path / "run", progress=True, evaluate=False)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mlp seed 7: ")]
    assert [line.split(" [")[0] for line in lines] == [f"mlp seed 7: {n}/3 epochs" for n in (1, 2, 3)]
    assert re.fullmatch(
        r"mlp seed 7: 3/3 epochs \[\d\d:\d\d<00:00, train/loss [\d.]+, val/loss [\d.]+, val/acc [\d.]+\]",
        lines[-1],
    )
    assert "\r" not in err
