"""Independent fits side by side (``compute.workers``) give exactly the results of a serial run."""

from __future__ import annotations

from pathlib import Path

import pytest

from sounding import stages, tracking
from sounding.config import Params
from sounding.depth import run_depth_study
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow


def _prepare(params: Params) -> Path:
    stages.prepare(params, "data/prepared")
    return Path("data/prepared")


def test_seeds_trained_side_by_side_equal_a_serial_run_and_each_has_its_run() -> None:
    params = tiny_params(**{"train.n_seeds": 2, "train.epochs": 4})
    data = _prepare(params)
    results = {}
    for workers in (2, 1):
        p = params.with_overrides({"compute.workers": workers})
        results[workers] = stages.train_architecture(
            p,
            "mlp",
            data,
            f"models-{workers}",
            f"metrics-{workers}.json",
            f"plots-{workers}",
            checkpoints=f"checkpoints-{workers}",
            progress=False,
        )
    side_by_side, serial = results[2]["seeds"], results[1]["seeds"]
    keys = ("seed", "test/acc", "test/loss", "test/f1_macro", "val/acc", "train/loss", "selected_epoch")
    assert [{k: s[k] for k in keys} for s in side_by_side] == [{k: s[k] for k in keys} for s in serial]
    client = tracking.client(params.tracking.uri)
    for row in side_by_side:
        run = client.get_run(row["run_id"])
        assert run.info.status == "FINISHED"
        assert tracking.logged_steps(params.tracking.uri, row["run_id"], "val/acc") == [0, 1, 2, 3]
    assert Path("models-2/model.safetensors").read_bytes() == Path("models-1/model.safetensors").read_bytes()


def test_depth_configurations_side_by_side_equal_a_serial_run() -> None:
    params = tiny_params(
        **{
            "depth.depths": [2, 8],
            "depth.residual": [False],
            "depth.inits": ["default"],
            "depth.clip": [0.0],
        }
    )
    data = _prepare(params)
    rows = {}
    for workers in (2, 1):
        p = params.with_overrides({"compute.workers": workers})
        summary = run_depth_study(
            p, data, f"depth-{workers}.json", f"plots-{workers}", f"ck-{workers}", False
        )
        rows[workers] = [(r["config"], r["test_acc"], r["init_grad_norms"]) for r in summary["configs"]]
    assert rows[2] == rows[1] and len(rows[1]) == 2


def test_a_failing_job_is_reported_and_leaves_no_run_open() -> None:
    from sounding.errors import TrainingDiverged

    params = tiny_params(
        **{"train.n_seeds": 3, "train.lr": 1e30, "train.optimizer": "sgd", "compute.workers": 2}
    )
    data = _prepare(params)
    with pytest.raises(TrainingDiverged, match="training loss became non-finite"):
        stages.train_architecture(params, "mlp", data, "models", "metrics.json", "plots", progress=False)
    assert not Path("metrics.json").exists()
    client = tracking.client(params.tracking.uri)
    runs = client.search_runs([tracking.experiment_id(params.tracking.uri, params.tracking.experiment)])
    # Seeds 42 and 43 start side by side and fail; seed 44 starts only if a worker took it before the
    # first failure reached this process. No run is left RUNNING.
    names = sorted(r.info.run_name for r in runs)
    assert names[:2] == ["mlp-seed42", "mlp-seed43"] and set(names) <= {
        "mlp-seed42",
        "mlp-seed43",
        "mlp-seed44",
    }
    assert all(r.info.status == "FAILED" for r in runs), [r.info.status for r in runs]
