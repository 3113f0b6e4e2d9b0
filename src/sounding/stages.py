"""The ``prepare`` and ``train`` stages (``pretrain`` trains through ``train_architecture`` too). The other
stages have a module each (``baselines``, ``tuning``, ``depth``, ``generative``, ``transfer``,
``registry``, ``report``); the CLI, and so ``dvc.yaml`` and the retraining flow, calls them.

Each stage reads its inputs, verifies them, does its work and publishes its outputs together.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sounding.config import Params
from sounding.files import atomic_write, published_together, write_json, write_text


def prepare(params: Params, out_dir: str | Path) -> dict:
    """Stage ``prepare``: write ``out_dir/{train,val,test}.npz`` and ``manifest.json``."""
    from sounding.data.prepare import prepare as prepare_data

    return prepare_data(params.data, params.seed, out_dir)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def train_architecture(
    params: Params,
    arch: str,
    data_dir: str | Path,
    model_dir: str | Path,
    results_path: str | Path,
    plots_dir: str | Path,
    checkpoints: str | Path = "checkpoints",
    progress: bool = True,
    tuned: str | Path | None = None,
    stage: str = "train",
    metrics_path: str | Path | None = None,
) -> dict[str, Any]:
    """Stage ``train@ARCH``: train every seed, evaluate on test, write model, metrics and plots.

    ``model_dir`` gets the first seed's model (``model.ckpt``, ``model.safetensors``, ``config.json``);
    ``results_path`` the test metrics as mean ± std over seeds; ``plots_dir`` learning-curve and
    confusion-matrix CSVs for ``dvc plots`` plus PNGs; ``metrics_path`` the headline metrics for DVC. The
    outputs are published together once all is written, or not at all (``files.published_together``); the
    seeds' runs end FINISHED when they are, FAILED when they are not (``tracking.held_until_published``).
    Each seed is one MLflow run ``ARCH-seedN`` tagged with ``stage`` (the ``pretrain`` stage trains through here too). ``tuned`` is a ``sounding tune``
    result (``best.json``) whose values replace those of params. The seeds train side by side in
    ``compute.workers`` processes (``parallel.run_jobs``).

    Under several processes (``torchrun``, ``srun``; ``compute.strategy: ddp``) the seeds train one after
    another, every rank trains and tests, and only rank zero creates the MLflow runs and writes files;
    every rank returns the same metrics (synchronised across ranks), with ``rank`` and ``processes``.
    """
    from sounding import headline, parallel, tracking
    from sounding import progress as progress_
    from sounding.data.prepare import load_prepared
    from sounding.training import build_system, process_rank, selection

    data = load_prepared(data_dir)
    tuned_values: dict[str, Any] = {}
    adopted = None  # no tuning result given
    untuned = params
    if tuned is not None:
        from sounding.tuning import tuned as apply_tuned

        params, tuned_values, adopted = apply_tuned(params, arch, tuned, data.sha256)
    build_system(params, arch, data)  # a shape the architecture cannot take fails here, before any training
    rank, processes = process_rank(params)  # a compute section that cannot run here fails here too
    select = selection(params, len(data.val.y))
    if params.train.select == "auto" and select != "best_val" and rank == 0:
        print(
            f"{stage} {arch}: the validation part holds {len(data.val.y)} samples (train.min_val is "
            f"{params.train.min_val}), too few to choose among epochs: each seed ships the weights of its "
            "epoch of lowest training loss",
            file=sys.stderr,
        )
    seeds = params.seeds()
    # Tuned values are trained beside the untuned ones on the same seeds: what tuning gained on test, paired.
    references = seeds if tuned_values else []
    side_by_side = processes == 1 and parallel.n_workers(params, len(seeds) + len(references)) > 1
    if side_by_side:  # the store and experiment exist before the workers meet them: two creating one race
        tracking.experiment_id(params.tracking.uri, params.tracking.experiment)
    outputs = (model_dir, results_path, plots_dir, *([metrics_path] if metrics_path else []))
    # A seed's run is FINISHED only once the stage's outputs are published; FAILED when they are not.
    with (
        tracking.held_until_published(params.tracking.uri, enabled=rank == 0),
        published_together(*outputs, enabled=rank == 0) as staged,
    ):
        model_out, results_out, plots_out, *headline_out = staged
        jobs = [
            SeedJob(
                params.model_dump_json(),
                arch,
                seed,
                i == 0,
                rank,
                str(data_dir),
                str(model_out),
                str(plots_out),
                str(checkpoints),
                stage,
                progress and not side_by_side,  # a bar per fit in one process, one over seeds otherwise
            )
            for i, seed in enumerate(seeds)
        ]
        jobs += [
            replace(jobs[i], params_json=untuned.model_dump_json(), first=False, untuned=True)
            for i in range(len(references))
        ]
        with progress_.bar(len(jobs), f"{stage} {arch}", "seed", enabled=side_by_side and progress) as bar:
            if processes > 1:  # every rank trains every seed together with the others
                per_seed = [train_seed(job) for job in jobs]
            else:
                per_seed = parallel.run_jobs(params, train_seed, jobs, on_done=lambda _: bar.update(1))
        per_seed, per_reference = per_seed[: len(seeds)], per_seed[len(seeds) :]
        metrics = _summary(params, arch, data, per_seed, processes, select, tuned_values, adopted)
        if adopted is not None:
            metrics["untuned"] = _untuned(per_seed, per_reference)
        if rank == 0:
            write_json(results_out, metrics)
            for path in headline_out:
                write_json(path, headline.train(metrics))
    return {**metrics, "rank": rank}


def _summary(
    params: Params,
    arch: str,
    data: Any,
    per_seed: list[dict[str, Any]],
    processes: int,
    select: str,
    tuned_values: dict[str, Any],
    adopted: str | None,
) -> dict[str, Any]:
    """``train_architecture``'s results: test metrics as mean ± std over seeds, and each seed's row."""
    from sounding.training import batch_size, learning_rate, passes_per_epoch

    model_uri = per_seed[0].pop("model_uri")
    for row in per_seed[1:]:
        row.pop("model_uri")
    acc_mean, acc_std = _mean_std([s["test/acc"] for s in per_seed])
    f1_mean, f1_std = _mean_std([s["test/f1_macro"] for s in per_seed])
    return {
        "arch": arch,
        "test_acc": acc_mean,
        "test_acc_std": acc_std,
        "test_f1_macro": f1_mean,
        "test_f1_macro_std": f1_std,
        "n_params": per_seed[0]["n_params"],
        "train_time_s": statistics.fmean(s["train_time_s"] for s in per_seed),
        "samples_per_s": statistics.fmean(s["samples_per_s"] for s in per_seed),
        "device": per_seed[0]["device"],
        "processes": processes,
        "epochs": params.train.epochs,
        "passes_per_epoch": passes_per_epoch(params, len(data.train.y)),
        "batch_size": batch_size(params, len(data.train.y)),
        "lr": learning_rate(params, batch_size(params, len(data.train.y))),
        "select": select,
        "data_sha256": data.sha256,
        "model_uri": model_uri,
        "params_hash": params.section_hash(f"models.{arch}", "train", "seed"),
        "tuned": tuned_values,
        "adopted": adopted,
        "seeds": per_seed,
    }


def _untuned(per_seed: list[dict[str, Any]], per_reference: list[dict[str, Any]]) -> dict[str, Any]:
    """The params' own values beside the trained ones: their test accuracy over the same seeds and the
    gain of the trained values, seed by seed (``gain_sem``: its standard error). When tuning kept the
    params' values, what trained is the untuned model (``trained: false``, gain 0)."""
    rows = per_reference or per_seed
    acc, acc_std = _mean_std([r["test/acc"] for r in rows])
    gains = [t["test/acc"] - r["test/acc"] for t, r in zip(per_seed, rows, strict=True)]
    gain, gain_std = _mean_std(gains)
    return {
        "test_acc": acc,
        "test_acc_std": acc_std,
        "gain": gain,
        "gain_sem": gain_std / math.sqrt(len(gains)),
        "trained": bool(per_reference),
        "seeds": [{k: r[k] for k in ("seed", "run_id", "test/acc")} for r in per_reference],
    }


@dataclass(frozen=True)
class SeedJob:
    """One seed of ``train_architecture`` (picklable: it may run in a worker process)."""

    params_json: str
    arch: str
    seed: int
    first: bool
    """The first seed's model is the one shipped (``model_dir``) and its plot data the one DVC reads."""
    rank: int
    data_dir: str
    model_dir: str
    plots_dir: str
    checkpoints: str
    stage: str
    progress: bool
    untuned: bool = False
    """The params' own values, trained beside tuned ones to compare with: tested and tracked (run
    ``ARCH-seedN-untuned``, tag ``reference: untuned``), nothing written."""


def train_seed(job: SeedJob) -> dict[str, Any]:
    """Train, test and publish one seed in its own MLflow run; its figures (and ``model_uri`` for the
    first seed). Rank zero alone creates the run and writes files."""
    from contextlib import nullcontext

    from sounding import tracking
    from sounding.data.prepare import load_prepared
    from sounding.training import fingerprint, fit

    params, arch, seed = Params.model_validate_json(job.params_json), job.arch, job.seed
    data = load_prepared(job.data_dir)
    run_dir = Path(job.checkpoints) / arch / fingerprint(params, arch, seed, data.sha256)
    tags = {"stage": job.stage, "arch": arch, "seed": str(seed), "data_sha256": data.sha256}
    tags.update({"reference": "untuned"} if job.untuned else {})
    # Other ranks take part in training and testing (collective calls) but create no run.
    # The run's params are what shaped it: seed, data, training, compute and this architecture's network.
    logged = tracking.section_params(params, "seed", "data", "train", f"models.{arch}", "compute")
    run = (
        tracking.resumable_run(
            params,
            run_dir,
            f"{arch}-seed{seed}" + ("-untuned" if job.untuned else ""),
            tags,
            logged_params=logged,
        )
        if job.rank == 0
        else None
    )
    model_uri = None
    with run or nullcontext(None) as run_id:
        if run_id is not None:
            source = str(Path(job.data_dir).resolve())
            tracking.log_dataset(
                params.tracking.uri, run_id, params.data.source, data.sha256, source, "train"
            )
        result = fit(params, arch, seed, data, run_dir, run_id=run_id, progress=job.progress)
        final = {k: v for k, v in result.metrics.items() if k.startswith("test/")}
        final.update(
            n_params=result.n_params, train_time_s=result.train_time_s, samples_per_s=result.samples_per_s
        )
        if job.rank == 0 and job.untuned:
            tracking.log_metrics(params.tracking.uri, run_id, final, step=len(result.history))
        elif job.rank == 0:
            model_uri = _publish_seed(
                params, arch, seed, data, result, final, Path(job.model_dir), Path(job.plots_dir), job.first
            )
    return {
        "seed": seed,
        "run_id": run_id,
        **final,
        "val/acc": result.metrics.get("val/acc"),
        "train/loss": result.metrics.get("train/loss"),
        "epochs": len(result.history),
        "selected_epoch": int(result.metrics["selected_epoch"]),
        "resumed_epochs": result.resumed_epochs,
        "device": result.device,
        "model_uri": model_uri,
    }


def _publish_seed(
    params: Params,
    arch: str,
    seed: int,
    data: Any,
    result: Any,
    final: dict[str, float],
    model_dir: Path,
    plots_dir: Path,
    first: bool,
) -> str | None:
    """Rank zero's outputs of one seed: plots and final metrics in its MLflow run, and for the first seed
    the model files, the pyfunc model (whose URI is returned) and the plot data for DVC."""
    import torch

    from sounding import plots, tracking
    from sounding.models.classifier import LitClassifier
    from sounding.serving import log_pyfunc

    uri, run_id = params.tracking.uri, result.run_id
    system = LitClassifier.load_from_checkpoint(result.checkpoint, weights_only=True, map_location="cpu")
    with torch.no_grad():
        predicted = system.net.eval()(torch.as_tensor(data.test.x)).argmax(1).numpy()
    cm = np.zeros((data.spec.num_classes,) * 2, dtype=np.int64)
    np.add.at(cm, (data.test.y, predicted), 1)
    seed_dir = plots_dir / f"seed-{seed}"
    pngs = [
        plots.learning_curves(result.history, f"{arch} seed {seed}", seed_dir / "learning_curves.png"),
        plots.confusion_matrix(cm, f"{arch} seed {seed}: test confusion", seed_dir / "confusion.png"),
        plots.grad_norm_heatmap(
            result.history, f"{arch} seed {seed}: gradient norm per layer", seed_dir / "grad_norms.png"
        ),
    ]
    tracking.log_metrics(uri, run_id, final, step=len(result.history))
    tracking.log_artifacts(uri, run_id, [p for p in pngs if p], "plots")
    tracking.log_artifacts(uri, run_id, [Path(result.checkpoint)], "checkpoint")
    if not first:
        return None
    _write_model(system, data, result.checkpoint, model_dir)
    model_uri = log_pyfunc(run_id, uri, model_dir, data.test.x[:2])
    _write_plot_data(result.history, data.test.y, predicted, plots_dir)
    return model_uri


def _write_model(system: Any, data: Any, checkpoint: str, model_dir: Path) -> None:
    """``model.ckpt`` (Lightning) beside ``model.safetensors`` + ``config.json`` (what the registry ships)."""
    from sounding.models.factory import save_net

    hp = system.hparams
    config = {
        "arch": hp.arch,
        "input_shape": list(data.spec.input_shape),
        "num_classes": data.spec.num_classes,
        "layout": data.spec.layout,
        "net": dict(hp.net or {}),
    }
    atomic_write(model_dir / "model.ckpt", lambda tmp: shutil.copyfile(checkpoint, tmp))
    save_net(system.net, config, model_dir)


def _write_plot_data(history: list[dict], y_true: np.ndarray, y_pred: np.ndarray, plots_dir: Path) -> None:
    keys = ["epoch", "train/loss", "val/loss", "train/acc", "val/acc"]
    rows = [",".join(k.replace("/", "_") for k in keys)]
    rows += [",".join(f"{h.get(k, float('nan')):.6g}" for k in keys) for h in history]
    write_text(plots_dir / "learning_curve.csv", "\n".join(rows) + "\n")
    pairs = "\n".join(f"{int(a)},{int(p)}" for a, p in zip(y_true, y_pred, strict=True))
    write_text(plots_dir / "confusion.csv", "actual,predicted\n" + pairs + "\n")
