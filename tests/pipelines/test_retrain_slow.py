"""The retraining flow on the project's own pipeline (a copy of the repository, tiny params): a flow run and
`dvc repro` agree on what is stale, both ways."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import retrain as pipeline
from sounding import tracking
from tests.conftest import copy_repo, run_dvc, write_params
from tests.pipelines.conftest import flow_params

pytestmark = pytest.mark.slow


def test_a_flow_run_and_dvc_repro_each_find_nothing_to_do_after_the_other(
    prefect_harness: None, tmp_path: Path
) -> None:
    root = copy_repo(tmp_path / "repo")
    write_params(root / "params.yaml", flow_params())
    params_path = str(root / "params.yaml")
    stages = [s.name for s in pipeline.pipeline(root)]

    run = pipeline.retrain(params_path, return_state=True)
    first = run.result()
    print("first flow run (fresh workspace):", first)
    assert first == dict.fromkeys(stages, "Completed")
    status = run_dvc("status", cwd=root)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout + status.stderr
    repro = run_dvc("repro", cwd=root)
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout + repro.stderr
    c = tracking.client(f"sqlite:///{root / 'mlflow.db'}")
    runs = c.search_runs([e.experiment_id for e in c.search_experiments()], max_results=10_000)
    assert {"train@linear", "train@cnn", "tune@cnn", "transfer"} <= {r.data.tags["dvc.stage"] for r in runs}
    assert {r.data.tags.get("prefect.flow_run_id") for r in runs} == {str(run.state_details.flow_run_id)}

    write_params(root / "params.yaml", flow_params(**{"models.cnn.dropout": 0.1}))
    repro = run_dvc("repro", cwd=root)
    assert "Running stage 'train@cnn'" in repro.stdout and "Running stage 'train@linear'" not in repro.stdout
    second = pipeline.retrain(params_path)
    print("second flow run (after dvc repro with models.cnn.dropout changed):", second)
    assert second == dict.fromkeys(stages, "Skipped")
