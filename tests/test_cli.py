"""CLI: fast help, exit code 2 with clear messages for bad input, and nothing touched before failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_commands, cli_options, run_cli


def test_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from sounding.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
        "heavy = [m for m in ('lightning', 'mlflow', 'torch', 'sklearn', 'aeon', 'numba', 'pandas') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_lists_the_stage_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("prepare", "train", "baselines", "report"):
        assert command in result.stdout


def test_every_option_help_survives_rich_markup() -> None:
    """Typer renders help through rich, which drops ``[anything]`` as a markup tag: a default written in
    brackets in a help text ("Model output folder [models/ARCH].") vanished from ``--help``. Defaults
    that are computed go in ``show_default`` instead, which the rendered help shows."""
    bracketed = [
        (name, p.name)
        for name, command in cli_commands().items()
        for p in command.params
        if "[" in (p.help or "")
    ]
    assert not bracketed, f"help texts with [brackets] that rich drops: {bracketed}"
    shown = run_cli("train", "--help", env={"COLUMNS": "200"}).stdout
    assert "[default: (models/ARCH)]" in shown, shown


def test_the_cli_reference_says_which_commands_take_params_and_overrides() -> None:
    """docs/cli.md's first paragraph lists, in backticks, the commands taking ``--params`` and ``-S``, then
    those taking ``--params`` only, then those taking neither: every command is in exactly its group."""
    import re

    text = (REPO / "docs" / "cli.md").read_text().split("\n\n")[1]
    both, params_only, neither = (
        set(re.findall(r"`([a-z][a-z -]*)`", part))
        for part in re.split(r"overrides \(values.*?\)\. |take `--params` but no `-S`\. ", text)
    )
    neither -= {"dvc repro"}
    options = cli_options()
    assert both | params_only | neither == set(options)
    assert all({"--params", "-S", "--set"} <= options[c] for c in both)
    assert all("--params" in options[c] and "-S" not in options[c] for c in params_only)
    assert all(not {"--params", "-S"} & options[c] for c in neither)


def test_out_of_range_param_exits_2_naming_key_value_and_allowed(tmp_path: Path) -> None:
    result = run_cli(
        "prepare", "--params", str(REPO / "params.yaml"), "-S", "data.val_fraction=2", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "data.val_fraction: Input should be less than 1 (got 2)" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "data").exists()


def test_misspelled_key_exits_2_with_a_suggestion(tmp_path: Path) -> None:
    result = run_cli(
        "prepare", "--params", str(REPO / "params.yaml"), "-S", "data.val_fractoin=0.2", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "did you mean 'data.val_fraction'?" in result.stderr


def test_unknown_architecture_exits_2_listing_the_allowed(tmp_path: Path) -> None:
    result = run_cli("train", "transformer", "--params", str(REPO / "params.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown architecture 'transformer'; allowed: linear, mlp, cnn, rnn" in result.stderr


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    "command",
    [["train", "cnn"], ["tune", "cnn"], ["baselines"], ["depth"], ["gan"], ["transfer"], ["register"]],
)
def test_missing_prepared_data_exits_2_before_importing_torch(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(
        *command, "--params", str(REPO / "params.yaml"), cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert result.returncode == 2, result.stderr
    assert "data/prepared/manifest.json not found: run `sounding prepare` first" in result.stderr
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line
    }
    assert "sounding.config" in imported and "torch" not in imported  # the answer is not 3-5 s of start-up
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.fresh_store
@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["train", "cnn", "--tuned", "best.json"], "best.json not found: run `sounding tune cnn` first"),
        (["transfer"], "models/pretrained/cnn/model.safetensors not found: run `sounding pretrain` first"),
        (["transfer", "-S", "transfer.source=nets/{arch}.pt"], "transfer.source: nets/cnn.pt not found"),
        (
            ["gan"],
            "models/cnn/model.safetensors not found: the judge is a trained classifier: run `sounding train cnn`",
        ),
    ],
)
def test_a_missing_input_file_exits_2_before_importing_torch(
    prepared: Path, tmp_path: Path, command: list[str], message: str
) -> None:
    result = run_cli(
        *command, "--params", str(REPO / "params.yaml"), cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "import time:" in line
    }
    assert "sounding.config" in imported and "torch" not in imported
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "results").exists()


def test_bad_option_is_a_usage_error() -> None:
    assert run_cli("train", "cnn", "--no-such-flag").returncode == 2


@pytest.mark.fresh_store
def test_an_output_that_cannot_be_written_exits_2_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("a file where a folder must be")
    for args in (
        ("train", "mlp", "--metrics", "blocker/mlp.json"),
        ("baselines", "--results", "blocker/sub/baselines.json"),
        ("report", "--out", "blocker/reports"),
    ):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert "blocker is a file, where a folder must be" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # nothing written, not even mlflow.db


def test_a_folder_without_write_permission_is_named(tmp_path: Path, monkeypatch) -> None:
    import os

    import pytest

    from sounding.errors import BadInput
    from sounding.files import check_writable

    (tmp_path / "metrics").mkdir()
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != tmp_path / "metrics"
    )  # root may write anywhere
    with pytest.raises(BadInput, match="no permission to write in .*metrics$"):
        check_writable(tmp_path / "metrics" / "cnn.json")
    check_writable(tmp_path / "results" / "cnn.json")  # a folder to create, in one that may be written


def test_a_full_disk_exits_74_with_one_line_naming_the_file(
    tmp_path: Path, prepared: Path, monkeypatch, capsys
) -> None:
    import errno

    import pytest

    from sounding import cli, stages
    from tests.conftest import tiny_params, write_params

    write_params(tmp_path / "params.yaml", tiny_params())

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "metrics/.mlp.json.partial")

    monkeypatch.setattr(stages, "train_architecture", disk_full)
    monkeypatch.setattr(sys, "argv", ["sounding", "train", "mlp", "-q"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    err = capsys.readouterr().err
    assert exited.value.code == cli.EXIT_NO_SPACE == 74 and err.count("\n") == 1, err
    assert err.startswith("error: no space left on the device writing metrics/.mlp.json.partial: free space")


@pytest.mark.parametrize(("user", "expected"), [(None, "120"), ("45", "45")])
def test_retrain_gives_prefects_ephemeral_server_time_to_start_and_keeps_a_user_setting(
    user: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    if user is not None:
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = user
    probe = (
        "from pathlib import Path; from sounding import cli; cli._retrain_module(Path('params.yaml'), None); "
        "from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == expected
