"""End to end on a real public set, as a user runs it: a UCR/UEA set bundled in aeon's wheel (no download),
only the data source changed, `dvc repro` of every stage on a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sounding.models.classifier import LitClassifier
from tests.conftest import copy_repo, run_cli, run_dvc, served_predictions, tiny_params, write_params

pytestmark = pytest.mark.slow


def test_the_whole_pipeline_runs_on_a_multichannel_ucr_set(tmp_path: Path) -> None:
    """BasicMotions: 40 + 40 series of 6 sensor channels, length 100, 4 classes."""
    root = copy_repo(tmp_path / "repo")
    copied = run_cli("example-data", "BasicMotions", cwd=root)
    assert copied.returncode == 0, copied.stderr
    params = tiny_params(
        **{
            "data.source": "ts",
            "data.path": "data/raw/BasicMotions_TRAIN.ts",
            "data.test_path": "data/raw/BasicMotions_TEST.ts",
            "train.archs": ["fcn"],  # every net takes channels: tests/models/test_nets.py
            "gan.judge": "fcn",  # the GAN stage skips on 6 channels
            "train.min_val": 100,  # the default: 4 validation series are too few to select or tune on
            "train.epochs": 4,
            "train.min_batches": 10,
            "depth.depths": [2],
            "depth.inits": ["default"],
            "depth.epochs": 1,
        }
    )
    write_params(root / "params.yaml", params)
    result = run_dvc("repro", cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    manifest = json.loads((root / "data/prepared/manifest.json").read_text())
    assert manifest["standardize"] == "channel" and manifest["files"]["train.npz"]["shape"]["x"] == [
        36,
        6,
        100,
    ]
    assert manifest["classes"] == ["badminton", "running", "standing", "walking"]
    best = json.loads((root / "tuning/fcn/best.json").read_text())  # 4 validation series: cross-validated
    assert best["folds"] == 5 and best["val_samples"] == 40 and best["adopted"] in ("tuned", "baseline")
    metrics = json.loads((root / "results/fcn.json").read_text())
    assert metrics["select"] == "min_train_loss" and metrics["adopted"] == best["adopted"]
    board = (root / "reports/leaderboard.md").read_text()
    assert "| fcn |" in board and "| classical: 1-NN (Euclidean) |" in board
    assert "baseline kept" in board or "tuned: " in board
    assert "## Transfer: skipped on this data" in board and "## Gan: skipped on this data" in board
    assert (root / "reports/promotion.json").is_file()
    assert run_dvc("status", cwd=root).stdout.strip().endswith("up to date.")

    # The registered model takes raw series (channels standardised inside it), over HTTP as at test time.
    x = np.load(root / "data/prepared/test.npz")["x"][:8].astype("float32")
    system = LitClassifier.load_from_checkpoint(root / "models/fcn/model.ckpt", weights_only=True)
    with torch.no_grad():
        at_test = system.net.eval()(torch.as_tensor(x)).softmax(-1).numpy()
    served = served_predictions(metrics["model_uri"], x, root, f"sqlite:///{root / 'mlflow.db'}")
    np.testing.assert_allclose(served, at_test, rtol=1e-5, atol=1e-6)
