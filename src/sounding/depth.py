"""Depth study: how vanishing and exploding gradients appear with depth, and what each cure does.

For every combination of depth × residual connections × initialisation × gradient clipping, an MLP is
trained briefly with the same ``fit()`` as ``sounding train``. Recorded per configuration: the per-layer
gradient norms at initialisation (one batch) and per epoch, the test accuracy, and whether training
diverged (a NaN or infinite loss).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sounding.config import Params
from sounding.models.nets.base import weight_matrices
from sounding.models.nets.mlp import hidden_layers


def experiment(params: Params) -> str:
    """The study's MLflow experiment, beside the training runs: ``<tracking.experiment>-depth``."""
    return f"{params.tracking.experiment}-depth"


@dataclass(frozen=True)
class DepthConfig:
    depth: int
    residual: bool
    init: str
    clip: float

    @property
    def name(self) -> str:
        clip = f"clip{self.clip:g}" if self.clip else "noclip"
        return f"d{self.depth}-{'res' if self.residual else 'plain'}-{self.init}-{clip}"

    def overrides(self, params: Params) -> dict[str, Any]:
        d = params.depth
        return {
            "models.mlp.depth": self.depth,
            "models.mlp.residual": self.residual,
            "models.mlp.init": self.init,
            "models.mlp.hidden": d.hidden,
            "models.mlp.dropout": 0.0,
            "train.gradient_clip_val": self.clip,
            "train.epochs": d.epochs,
            # A study of gradients over a few epochs: a small set's step minimum (2000 steps for each of
            # the 40 configurations) would make it the pipeline's longest stage, for no finding.
            "train.min_steps": 0,
            "train.lr": d.lr,
        }


def grid(params: Params) -> list[DepthConfig]:
    """Every combination of ``depth.depths`` × ``residual`` × ``inits`` × ``clip``, once each. A 2-layer MLP
    has no hidden layer for a skip connection to go round, so it is the same network with or without one:
    at depth 2 (and below) there is one configuration, plain, not two that train the same net twice."""
    d = params.depth
    configs = (
        DepthConfig(depth, residual and hidden_layers(depth) > 0, init, clip)
        for depth, residual, init, clip in itertools.product(d.depths, d.residual, d.inits, d.clip)
    )
    return list(dict.fromkeys(configs))


def _with_shared_starts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the plots draw them: a plain row of depth 2 also starts each residual line (the same
    network, ``grid``), so that both lines begin where they do."""
    residual = any(r["residual"] for r in rows)
    return rows + [{**r, "residual": True} for r in rows if residual and hidden_layers(r["depth"]) == 0]


def layer_grad_norms(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """L2 norm of each weight matrix's gradient for one batch, input layer first."""
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    return {name: float(p.grad.norm()) for name, p in weight_matrices(net)}


def first_last_ratio(norms: dict[str, float]) -> float | None:
    """Gradient norm of the first layer ÷ that of the last: ≪ 1 means vanishing, ≫ 1 exploding.

    None when it is undefined (a zero or non-finite norm).
    """
    values = list(norms.values())
    ratio = values[0] / values[-1] if values[-1] > 0 else math.inf
    return ratio if math.isfinite(ratio) else None


def run_depth_study(
    params: Params,
    data_dir: str | Path,
    results_path: str | Path,
    plots_dir: str | Path,
    checkpoints: str | Path = "checkpoints",
    progress: bool = True,
) -> dict[str, Any]:
    """Stage ``depth``: train every configuration of the grid (side by side in ``compute.workers``
    processes), write ``results_path`` and ``plots_dir``."""
    from sounding import parallel, plots, tracking
    from sounding import progress as progress_
    from sounding.data.prepare import load_prepared
    from sounding.files import write_json

    load_prepared(data_dir)  # verified here, before any work and before any worker starts
    plots_dir = Path(plots_dir)
    configs = grid(params)
    jobs = [
        ConfigJob(params.model_dump_json(), c, str(data_dir), str(plots_dir), str(checkpoints))
        for c in configs
    ]
    if parallel.n_workers(params, len(jobs)) > 1:  # the experiment exists before the workers meet it
        tracking.experiment_id(params.tracking.uri, experiment(params))
    with progress_.bar(len(jobs), "depth study", "config", enabled=progress) as bar:
        rows = parallel.run_jobs(params, train_config, jobs, on_done=lambda _: bar.update(1))
    drawn = _with_shared_starts(rows)
    plots.depth_summary(drawn, plots_dir / "accuracy_vs_depth.png")
    plots.depth_ratio_summary(drawn, plots_dir / "init_gradient_ratio.png")
    summary = {"configs": rows, "n_diverged": sum(r["diverged"] for r in rows)}
    write_json(results_path, summary)
    return summary


@dataclass(frozen=True)
class ConfigJob:
    """One configuration of the study (picklable: it may run in a worker process)."""

    params_json: str
    config: DepthConfig
    data_dir: str
    plots_dir: str
    checkpoints: str


def train_config(job: ConfigJob) -> dict[str, Any]:
    """Gradient norms at initialisation, then a tracked ``fit``, of one configuration: its summary row."""
    from sounding import plots, tracking
    from sounding.data.prepare import load_prepared
    from sounding.errors import TrainingDiverged
    from sounding.models.factory import build_net, net_kwargs
    from sounding.training import fingerprint, fit

    params, config = Params.model_validate_json(job.params_json), job.config
    data = load_prepared(job.data_dir)
    x = torch.as_tensor(data.train.x[:500])
    y = torch.as_tensor(data.train.y[:500])
    p = params.with_overrides(config.overrides(params))
    torch.manual_seed(params.seed)
    net = build_net(
        "mlp", data.spec.input_shape, data.spec.num_classes, data.spec.layout, **net_kwargs(p, "mlp")
    )
    at_init = layer_grad_norms(net, x, y)
    ratio = first_last_ratio(at_init)
    run_dir = Path(job.checkpoints) / "depth" / fingerprint(p, "mlp", params.seed, data.sha256)
    tags = {
        "stage": "depth",
        "arch": "mlp",
        "seed": str(params.seed),
        "data_sha256": data.sha256,
        "config": config.name,
    }
    # The params that shaped the fit, the configuration's overrides included, not the whole file.
    logged = tracking.section_params(p, "seed", "data", "train", "models.mlp", "compute")
    with tracking.resumable_run(
        p, run_dir, config.name, tags, logged_params=logged, experiment=experiment(p)
    ) as run_id:
        try:
            result = fit(p, "mlp", params.seed, data, run_dir, run_id=run_id, progress=False)
            history, acc, diverged = result.history, result.metrics["test/acc"], False
        except TrainingDiverged:
            history, acc, diverged = [], float("nan"), True
        final = {"diverged": float(diverged)}
        if ratio is not None:
            final["init/first_last_ratio"] = ratio
        if not diverged:
            final["test/acc"] = acc
        tracking.log_metrics(p.tracking.uri, run_id, final, step=p.train.epochs)
        png = plots.depth_heatmap(
            at_init, history, config.name, Path(job.plots_dir) / "heatmaps" / f"{config.name}.png"
        )
        tracking.log_artifacts(p.tracking.uri, run_id, [png], "plots")
    return {
        "config": config.name,
        "depth": config.depth,
        "residual": config.residual,
        "init": config.init,
        "clip": config.clip,
        "diverged": diverged,
        "test_acc": None if diverged else acc,
        "init_grad_norms": at_init,
        "init_first_last_ratio": ratio,
        "run_id": run_id,
    }
