"""The leaderboard: networks and classical baselines ranked together, and the line comparing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from sounding.errors import BadInput
from sounding.files import write_json
from sounding.report import write_report
from tests.conftest import run_cli, tiny_params, write_params

SHA = "a" * 64


def net(arch: str, acc: float, std: float = 0.01, seeds: int = 3) -> dict:
    """A results/ARCH.json as ``sounding train`` writes it (the fields the leaderboard reads)."""
    return {
        "arch": arch,
        "test_acc": acc,
        "test_acc_std": std,
        "test_f1_macro": acc - 0.01,
        "n_params": 5210,
        "seeds": [{"seed": 42 + i} for i in range(seeds)],
        "train_time_s": 12.0,
        "samples_per_s": 30000.0,
        "device": "cpu",
        "adopted": None,
        "data_sha256": SHA,
    }


def classical(logreg: float, nn: float, sha: str = SHA) -> dict:
    """A results/baselines.json as ``sounding baselines`` writes it."""

    def row(name: str, label: str, acc: float, n_params: int) -> dict:
        return {"arch": f"baseline/{name}", "label": label, "test_acc": acc, "test_f1_macro": acc - 0.02,
                "train_time_s": 0.1, "predict_time_s": 0.2, "n_params": n_params}  # fmt: skip

    return {
        "fit_on": "train+val",
        "n_fit": 4000,
        "n_test": 1000,
        "seed": 42,
        "data_sha256": sha,
        "baselines": {
            "logreg": row("logreg", "logistic regression (sklearn)", logreg, 410),
            "1nn": row("1nn", "1-NN (Euclidean)", nn, 160_000),
        },
    }


def report(tmp_path: Path, nets: list[dict], baselines: dict | None, source: str = "mnist1d") -> str:
    for m in nets:
        write_json(tmp_path / "results" / f"{m['arch']}.json", m)
    if baselines is not None:
        write_json(tmp_path / "results" / "baselines.json", baselines)
    path = write_report(tmp_path / "results", [m["arch"] for m in nets], source, tmp_path / "reports")
    assert (tmp_path / "reports" / "leaderboard.png").stat().st_size > 0
    return path.read_text()


def table(board: str) -> list[list[str]]:
    return [
        line.strip("|").split(" | ")
        for line in board.splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]


def test_baselines_are_ranked_among_the_networks_and_marked_classical(tmp_path: Path) -> None:
    board = report(tmp_path, [net("linear", 0.30), net("cnn", 0.90)], classical(logreg=0.33, nn=0.57))
    rows = table(board)
    assert [(r[0].strip(), r[1]) for r in rows] == [
        ("1", "cnn"),
        ("2", "classical: 1-NN (Euclidean)"),
        ("3", "classical: logistic regression (sklearn)"),
        ("4", "linear"),
    ]
    nn, logreg = rows[1], rows[2]
    assert nn[2] == "160,000 stored" and nn[3] == "0.570" and nn[5] == "–"  # no published 1-NN figure
    assert logreg[2] == "410" and logreg[5] == "0.32"  # Greydanus & Kobak's logistic regression
    assert "fit once on train + val (4000 samples" in board
    assert (
        "**Best network: cnn** (0.900) beats the better classical baseline, 1-NN (Euclidean) (0.570) "
        "by 33.0 points (its std over seeds: 1.0 points)." in board
    )


def test_a_network_that_trails_the_classical_baseline_is_said_to(tmp_path: Path) -> None:
    board = report(tmp_path, [net("mlp", 0.512, seeds=1)], classical(logreg=0.40, nn=0.55), source="npz")
    assert (
        "**Best network: mlp** (0.512) trails the better classical baseline, 1-NN (Euclidean) (0.550) "
        "by 3.8 points." in board
    )
    assert [r[1] for r in table(board)] == [
        "classical: 1-NN (Euclidean)",
        "mlp",
        "classical: logistic regression (sklearn)",
    ]
    assert all(r[5] == "–" for r in table(board))  # published figures are MNIST-1D's only


def test_missing_baselines_say_how_to_make_them(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"baselines.json not found: run `sounding baselines` first"):
        report(tmp_path, [net("cnn", 0.9)], None)
    assert not (tmp_path / "reports" / "leaderboard.md").exists()


def test_baselines_of_other_data_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"computed on data bbbbbbbbbbbb, but cnn on other data"):
        report(tmp_path, [net("cnn", 0.9)], classical(0.3, 0.5, sha="b" * 64))


def test_report_command_prints_the_leaderboard_with_the_baselines(tmp_path: Path) -> None:
    write_params(tmp_path / "params.yaml", tiny_params())
    for m in (net("linear", 0.31), net("mlp", 0.66), net("cnn", 0.92), net("rnn", 0.88), net("fcn", 0.9)):
        write_json(tmp_path / "results" / f"{m['arch']}.json", m)
    write_json(tmp_path / "results" / "baselines.json", classical(0.32, 0.57))
    result = run_cli("report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| classical: 1-NN (Euclidean) |" in result.stdout and "**Best network: cnn**" in result.stdout
    assert (tmp_path / "reports" / "leaderboard.md").read_text() in result.stdout


def test_a_study_skipped_on_this_data_says_why() -> None:
    from sounding.report import skipped_section, transfer_section

    assert skipped_section("gan", {"skipped": "one-channel series only"}) == (
        "## Gan: skipped on this data\n\none-channel series only\n"
    )
    partial = {
        "source": "pretrain",
        "seeds": [42],
        "steps": 10,
        "labels": {"1": 5},
        "results": {
            "cnn": {"scratch": {"1": {"acc": 0.5, "acc_std": 0.0}}, "linear_probe": {}, "finetune": {}}
        },
        "skipped": {"mlp": "input.weight: file has (100, 40), model expects (100, 24)"},
    }
    partial["results"]["cnn"]["linear_probe"] = partial["results"]["cnn"]["finetune"] = {
        "1": {"acc": 0.6, "acc_std": 0.0, "gain": 0.1}
    }
    assert "\n- mlp: skipped, input.weight: file has (100, 40)" in transfer_section(partial)
