"""Depth study: vanishing gradients are measurable at initialisation, and the stage writes its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sounding.config import Params
from sounding.depth import first_last_ratio, grid, layer_grad_norms, run_depth_study
from sounding.models.nets import MLP


def _ratio(depth: int, residual: bool, init: str = "default") -> float:
    torch.manual_seed(0)
    x, y = torch.randn(32, 40), torch.arange(32) % 10
    return first_last_ratio(layer_grad_norms(MLP((40,), 10, depth=depth, residual=residual, init=init), x, y))


def test_vanishing_gradients_at_depth_32_and_residual_connections_cure_them() -> None:
    plain, residual = _ratio(32, False), _ratio(32, True)
    assert plain < 1e-6, plain  # the first layer gets a millionth of the last layer's gradient, or less
    assert plain < residual * 1e-4  # at least four orders of magnitude apart
    assert _ratio(32, False, "kaiming") > 1e-2  # He initialisation preserves the gradient through ReLUs


def test_grad_norms_are_listed_input_first() -> None:
    names = list(layer_grad_norms(MLP((40,), 10, depth=4), torch.randn(8, 40), torch.arange(8)))
    assert names == ["backbone.input", "backbone.hidden.0", "backbone.hidden.1", "head"]


def test_grid_is_the_full_product_with_one_network_at_depth_2(params: Params) -> None:
    configs = grid(params)
    # depths 2, 8, 32 × residual or not × 4 inits × 2 clips, less depth 2's residual twins
    assert len(configs) == (1 + 2 + 2) * 4 * 2 and len({c.name for c in configs}) == len(configs)
    assert not any(c.residual for c in configs if c.depth == 2)
    assert {c.residual for c in configs if c.depth == 8} == {False, True}


def test_a_2_layer_mlp_is_the_same_network_with_or_without_residual_connections() -> None:
    x = torch.randn(8, 40)
    nets = []
    for residual in (False, True):
        torch.manual_seed(0)
        nets.append(MLP((40,), 10, depth=2, residual=residual))
    assert torch.equal(nets[0](x), nets[1](x))
    residual, plain = MLP((40,), 10, depth=3, residual=True), MLP((40,), 10, depth=3, residual=False)
    plain.load_state_dict(residual.state_dict())
    assert not torch.equal(residual(x), plain(x))  # from depth 3 on, the skip connection changes the net


def test_stage_writes_metrics_plots_and_runs(params: Params, prepared: Path, tmp_path: Path) -> None:
    small = params.with_overrides(
        {
            "depth.depths": [2, 6],
            "depth.inits": ["default"],
            "depth.clip": [0.0, 1.0],
            "depth.residual": [False],
            "depth.epochs": 1,
            "depth.hidden": 16,
        }
    )
    summary = run_depth_study(small, prepared, tmp_path / "depth.json", tmp_path / "plots", progress=False)
    assert len(summary["configs"]) == 4
    saved = json.loads((tmp_path / "depth.json").read_text())
    assert {r["config"] for r in saved["configs"]} == {
        "d2-plain-default-noclip",
        "d2-plain-default-clip1",
        "d6-plain-default-noclip",
        "d6-plain-default-clip1",
    }
    assert all(0 <= r["test_acc"] <= 1 for r in saved["configs"])
    assert (tmp_path / "plots" / "accuracy_vs_depth.png").is_file()
    assert len(list((tmp_path / "plots" / "heatmaps").glob("*.png"))) == 4
    from sounding import tracking

    exp = tracking.client(small.tracking.uri).get_experiment_by_name("sounding-depth")
    assert len(tracking.client(small.tracking.uri).search_runs([exp.experiment_id])) == 4
