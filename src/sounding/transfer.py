"""Pretrained-backbone transfer: how much does a pretrained network help, at each label budget?

Each architecture is trained on stratified, seeded fractions ("budgets") of the target's training labels
in three ways, over the pipeline's seeds:

- ``scratch``: the whole network from its random initialisation;
- ``linear_probe``: the pretrained backbone frozen, only the head trained;
- ``finetune``: the pretrained backbone and the head, the backbone at a lower learning rate.

Beside them, ``zero_shot``: the pretrained network as it is, tested on the target with no target label
(only with the source's head, which knows the target's classes). The gains of the pretrained strategies
are reported over scratch and over zero-shot: at a small budget, much of a fine-tuned network's accuracy
can be the source classifier's own.

The head of both pretrained strategies is the source network's (``transfer.head: pretrained``, for a
source with the target's classes) or a new one initialised as scratch's (``transfer.head: new``).

Every fit runs the same number of optimizer steps whatever the budget, so strategies and budgets get the
same compute, and is validated ``transfer.evals`` times; the selected weights are tested (``train.select``).
For one seed, every strategy sees the same labelled subset and the same batches (with a new head, also the
same head initialisation), so the gain over scratch is a paired difference. Pretrained weights are only read
from safetensors, or from torch files loaded with ``weights_only=True``: a checkpoint that needs unpickling
is refused, and nothing in it runs.
"""

from __future__ import annotations

import itertools
import json
import pickle
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sounding.config import MLFLOW_MODEL_URI_PREFIXES, Params
from sounding.data.module import TensorDataModule
from sounding.data.prepare import DataSpec, Prepared
from sounding.errors import BadInput, Incompatible

STRATEGIES = ("scratch", "linear_probe", "finetune")
"""The strategies trained at every budget and seed."""
ROWS = ("zero_shot", *STRATEGIES)
"""What the study reports per architecture and budget (``zero_shot`` only with ``transfer.head: pretrained``)."""


def experiment(params: Params) -> str:
    """The study's MLflow experiment, beside the training runs: ``<tracking.experiment>-transfer``."""
    return f"{params.tracking.experiment}-transfer"


@dataclass(frozen=True)
class Backbone:
    """Pretrained backbone tensors for one architecture, and the network settings they were trained with."""

    arch: str
    state: dict
    """The backbone's state dict (keys without the ``backbone.`` prefix)."""
    head: dict | None
    """The source network's head state dict (keys without ``head.``) when ``transfer.head`` is
    ``pretrained``; ``None`` for a new head."""
    net: dict[str, Any]
    """Constructor arguments of the network (``models.ARCH``); scratch uses the same, for a fair comparison."""
    source: str


def source_params(params: Params) -> Params:
    """The params of the ``pretrain`` stage: the source data, ``pretrain_epochs``, one seed, the transfer
    experiment. Everything else (architectures, optimiser, compute) is the pipeline's."""
    t = params.transfer
    return params.with_overrides(
        {
            "data": t.source_data.model_dump(mode="json"),
            "train.epochs": t.pretrain_epochs,
            "train.n_seeds": 1,
            "tracking.experiment": experiment(params),
        }
    )


def pretrain(
    params: Params,
    data_dir: str | Path,
    model_dir: str | Path,
    results_dir: str | Path,
    plots_dir: str | Path,
    progress: bool = True,
) -> dict[str, dict]:
    """Stage ``pretrain``: generate the source data into ``data_dir``, then train each of ``transfer.archs``
    on it with the same code as ``sounding train``; models go to ``model_dir/ARCH``."""
    from sounding import stages

    source = source_params(params)
    stages.prepare(source, data_dir)
    return {
        arch: stages.train_architecture(
            source,
            arch,
            data_dir,
            Path(model_dir) / arch,
            Path(results_dir) / f"{arch}.json",
            Path(plots_dir) / arch,
            progress=progress,
            stage="pretrain",
        )
        for arch in params.transfer.archs
    }


def budget_indices(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified, seeded subset: ``max(1, round(fraction × n_c))`` of each class.

    Each class is shuffled once per seed and its first items are kept, so for one seed a smaller budget
    is a subset of a larger one, and the same (y, fraction, seed) always gives the same subset.
    """
    rng = np.random.default_rng(seed)
    kept = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        kept.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(kept))


# --- Loading a pretrained backbone ------------------------------------------------------------------


def load_backbone(params: Params, arch: str, spec: DataSpec, pretrained_dir: str | Path) -> Backbone:
    """The pretrained backbone for ``arch`` from ``transfer.source``, checked against the target data.

    Raises ``BadInput`` for a missing or unreadable source, a file that needs unpickling, or weights
    that do not fit ``arch`` on the target's inputs (naming the mismatching tensors).
    """
    from sounding.models.factory import build_net, check_state_compatible

    where = params.transfer.source_for(arch, pretrained_dir)
    if where.startswith(MLFLOW_MODEL_URI_PREFIXES):
        net, config = _load_mlflow(where, params.tracking.uri)
    else:
        net, config = _load_file(Path(where))
    state = {k.removeprefix("backbone."): v for k, v in net.state_dict().items() if k.startswith("backbone.")}
    given = config.get("arch")
    # Settings of the pretrained network when it is this architecture; otherwise the params', so that the
    # error below lists the tensors the file lacks and those it has instead.
    kwargs = (
        (config.get("net") or {}) if given == arch else getattr(params.models, arch).model_dump(mode="json")
    )
    # The source's input standardisation is a property of its data, not of the architecture: the target
    # network standardises its own inputs (``data.standardize``).
    kwargs = {k: v for k, v in kwargs.items() if k != "standardize"}
    try:
        kwargs = getattr(params.with_overrides({f"models.{arch}": kwargs}).models, arch).model_dump(
            mode="json"
        )
        target = build_net(arch, spec.input_shape, spec.num_classes, spec.layout, **kwargs)
    except BadInput as exc:
        raise Incompatible(f"{where}: its {arch} settings do not fit the target data: {exc}") from None
    try:
        check_state_compatible(target.backbone, state, f"{where} (a {given} network) as the {arch} backbone")
    except BadInput as exc:
        raise Incompatible(str(exc)) from None
    head = {k.removeprefix("head."): v for k, v in net.state_dict().items() if k.startswith("head.")}
    try:
        check_state_compatible(target.head, head, f"{where}'s head")
    except BadInput as exc:
        if params.transfer.head == "pretrained":
            raise Incompatible(
                f"transfer.head=pretrained keeps the source network's classifier, so the source must have "
                f"the target's {spec.num_classes} classes: {exc}. Set transfer.head=new (or auto) for a new head"
            ) from None
        head = None  # auto: the source's classes are not the target's
    if params.transfer.head == "new":
        head = None
    return Backbone(arch=arch, state=state, head=head, net=kwargs, source=where)


def _load_safetensors(weights: Path, config: Path) -> tuple[Any, dict]:
    from sounding.models.factory import load_net

    if not config.is_file():
        raise BadInput(f"{config} not found: a .safetensors checkpoint needs its config.json beside it")
    return load_net(weights, config)


def _load_mlflow(uri: str, tracking_uri: str) -> tuple[Any, dict]:
    """A logged Sounding model's network and config, read from the store as data (nothing stored with it
    runs: see ``sounding.serving.load_model``)."""
    from sounding.serving import load_model

    model = load_model(uri, tracking_uri)
    return model.net, model.config


def _load_file(path: Path) -> tuple[Any, dict]:
    from sounding.config import TRANSFER_FILE_SUFFIXES
    from sounding.models.factory import net_from_state

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _load_safetensors(path, path.parent / "config.json")
    if suffix not in TRANSFER_FILE_SUFFIXES:
        raise BadInput(f"transfer.source: {path} must end in {', '.join(TRANSFER_FILE_SUFFIXES)}")
    payload = _torch_load(path)
    if suffix == ".ckpt":
        hp, state = payload.get("hyper_parameters"), payload.get("state_dict")
        if not isinstance(hp, dict) or not isinstance(state, dict) or "arch" not in hp:
            raise BadInput(
                f"{path}: not a Sounding Lightning checkpoint (no hyper_parameters.arch and state_dict); "
                "give a .pt state dict with config.json beside it instead"
            )
        config = {k: hp.get(k) for k in ("arch", "input_shape", "num_classes", "layout", "net")}
        state = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    else:
        config_path = path.parent / "config.json"
        if not config_path.is_file():
            raise BadInput(f"{config_path} not found: a {suffix} state dict needs its config.json beside it")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise BadInput(f"{config_path}: cannot read the model config ({exc})") from None
        state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise BadInput(f"{path}: expected a state dict of tensors")
    return net_from_state(state, config, str(path)), config


def _torch_load(path: Path) -> dict:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only; a pickle that would
    build other objects (and so could run code) is refused before anything in it executes."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(
            f"{path}: refused, it does not load with torch.load(weights_only=True) ({reason}). "
            "Only tensors are read from checkpoints; nothing is unpickled"
        ) from None
    if not isinstance(payload, dict):
        raise BadInput(f"{path}: expected a checkpoint dict, got {type(payload).__name__}")
    return payload


# --- The experiment -----------------------------------------------------------------------------------


def _fit(
    params: Params,
    backbone: Backbone,
    strategy: str,
    seed: int,
    data: Prepared,
    workdir: Path,
) -> float:
    """Train one strategy on one labelled subset (``data.train``) and return its test accuracy."""
    import lightning as L

    from sounding.training import SELECTIONS, build_system, load_best, selection, train_system

    t = params.transfer
    scale = {"scratch": 1.0, "linear_probe": 0.0, "finetune": t.backbone_lr_scale}[strategy]
    n = len(data.train.y)
    batch = min(params.train.batch_size, n)
    L.seed_everything(seed, verbose=False)
    system = build_system(params, backbone.arch, data, batch, backbone_lr_scale=scale)
    if strategy != "scratch":
        system.net.backbone.load_state_dict(backbone.state)
        if backbone.head is not None:
            system.net.head.load_state_dict(backbone.head)
    # Every budget's epoch is the same number of steps: a 1% budget is seen many times an epoch.
    datamodule = TensorDataModule(data, batch, seed, epoch_samples=max(1, t.steps // t.evals) * batch)
    fitted = train_system(
        params,
        system,
        datamodule,
        workdir / f"{backbone.arch}-{strategy}-{n}-s{seed}",
        seed,
        max_epochs=t.evals,
        monitor=(monitor := SELECTIONS[selection(params, len(data.val.y))])[0],
        mode=monitor[1],
    )
    load_best(system, fitted)  # nothing to load with train.select: last
    return _test_accuracy(system, data)


def _test_accuracy(system: Any, data: Prepared) -> float:
    with torch.no_grad():
        logits = system.net.eval()(torch.as_tensor(data.test.x, device=system.device))
    # A count over the total in Python's float: the exact share (0.932), not a float32 mean's 0.93199998.
    return int((logits.argmax(1).cpu() == torch.as_tensor(data.test.y)).sum()) / len(data.test.y)


def zero_shot(params: Params, backbone: Backbone, data: Prepared) -> float | None:
    """Test accuracy of the pretrained network as it is (its backbone and the source's head), trained on no
    target label; ``None`` with a new head (``transfer.head: new``), which knows nothing of the target."""
    from sounding.training import build_system

    if backbone.head is None:
        return None
    system = build_system(
        params.with_overrides({f"models.{backbone.arch}": backbone.net}), backbone.arch, data
    )
    system.net.backbone.load_state_dict(backbone.state)
    system.net.head.load_state_dict(backbone.head)
    return _test_accuracy(system, data)


@dataclass(frozen=True)
class FitJob:
    """One fit of the study (picklable: it may run in a worker process, ``parallel.run_jobs``)."""

    params_json: str
    backbone: Backbone
    strategy: str
    seed: int
    data: Prepared
    """The target data with its training part cut to the budget."""
    workdir: str


def fit_job(job: FitJob) -> float:
    """``_fit`` of a ``FitJob``: its test accuracy."""
    params = Params.model_validate_json(job.params_json)
    return _fit(params, job.backbone, job.strategy, job.seed, job.data, Path(job.workdir))


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_transfer(
    params: Params,
    data_dir: str | Path,
    pretrained_dir: str | Path,
    results_path: str | Path,
    plots_dir: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Stage ``transfer``: every architecture × strategy × budget × seed; write metrics, plots, MLflow runs.

    Every source is loaded and checked before the first fit, so bad input stops the stage before any
    work and before any output is touched.
    """
    import dataclasses

    from sounding import parallel, tracking
    from sounding import progress as progress_
    from sounding.data.prepare import Split, load_prepared
    from sounding.files import write_json

    start = time.perf_counter()
    t = params.transfer
    data = load_prepared(data_dir)
    backbones, skipped = {}, {}
    for arch in t.archs:
        try:
            backbones[arch] = load_backbone(params, arch, data.spec, pretrained_dir)
        except Incompatible as exc:
            if t.source != "pretrain":
                raise  # a source the user named must fit: that is bad input
            # The pipeline's own pretrained networks are trained on the built-in source data; on a user's
            # data of another length, channels or classes they may not fit. Say so and record it.
            skipped[arch] = str(exc)
    if not backbones:
        summary = {"source": t.source, "skipped": skipped, "data_sha256": data.sha256, "results": {}}
        write_json(results_path, summary)
        Path(plots_dir).mkdir(parents=True, exist_ok=True)  # a DVC out
        return summary
    torch.set_num_threads(params.compute.threads)
    budgets, seeds = sorted(t.budgets), params.seeds()
    subsets = {(b, s): budget_indices(data.train.y, b, s) for b in budgets for s in seeds}
    acc: dict[tuple[str, str, float], list[float]] = {}
    tags = {"stage": "transfer", "data_sha256": data.sha256, "source": t.source}
    fits = progress_.bar(
        len(backbones) * len(budgets) * len(seeds) * len(STRATEGIES), "transfer", "fit", progress
    )
    # Each run logs what shaped it (an architecture's fits, its network too), not the whole file.
    logged = tracking.section_params(params, "seed", "data", "transfer", "train", "compute")
    with (
        tracking.tracked_run(
            params, "transfer", tags, logged_params=logged, experiment=experiment(params)
        ) as parent,
        tempfile.TemporaryDirectory() as workdir,
    ):
        jobs, keys = [], []
        for arch, backbone in backbones.items():
            arch_params = params.with_overrides({f"models.{arch}": backbone.net}).model_dump_json()
            for budget in budgets:
                for seed in seeds:
                    idx = subsets[budget, seed]
                    subset = dataclasses.replace(data, train=Split(data.train.x[idx], data.train.y[idx]))
                    for strategy in STRATEGIES:
                        jobs.append(FitJob(arch_params, backbone, strategy, seed, subset, workdir))
                        keys.append((arch, strategy, budget))
        # Side by side in compute.workers processes; each fit depends on its seed alone.
        values = parallel.run_jobs(params, fit_job, jobs, on_done=lambda _: fits.update(1))
        for key, value in zip(keys, values, strict=True):
            acc.setdefault(key, []).append(value)
        fits.close()
        labels = {b: len(subsets[b, seeds[0]]) for b in budgets}
        zero = {arch: zero_shot(params, backbone, data) for arch, backbone in backbones.items()}
        results = _results(acc, backbones, budgets, labels, zero)
        gains = gain_profile(results, budgets)
        for arch in backbones:
            for strategy in results[arch]:
                for budget in budgets:
                    row = results[arch][strategy][f"{budget:g}"]
                    child_tags = {**tags, "arch": arch, "strategy": strategy, "budget": f"{budget:g}"}
                    with tracking.tracked_run(
                        params,
                        f"{arch}-{strategy}-{budget:g}",
                        child_tags,
                        logged_params=logged | tracking.section_params(params, f"models.{arch}"),
                        experiment=experiment(params),
                        parent_run_id=parent,
                    ) as child:
                        tracking.log_metrics(
                            params.tracking.uri,
                            child,
                            {f"test/{k}": v for k, v in row.items() if isinstance(v, float)},
                            step=0,
                        )
        pngs = write_plots(results, budgets, labels, Path(plots_dir))
        summary = {
            "source": t.source,
            "budgets": budgets,
            "labels": {f"{b:g}": labels[b] for b in budgets},
            "seeds": seeds,
            "steps": t.steps,
            "evals": t.evals,
            "head": t.head,
            "backbone_lr_scale": t.backbone_lr_scale,
            "data_sha256": data.sha256,
            "run_id": parent,
            "sources": {arch: b.source for arch, b in backbones.items()},
            "skipped": skipped,
            "results": results,
            "gains": gains,
            "wall_time_s": round(time.perf_counter() - start, 1),
        }
        write_json(results_path, summary)
        uri = params.tracking.uri
        smallest = f"{budgets[0]:g}"
        tracking.log_metrics(
            uri,
            parent,
            {
                f"{arch}/{s}/gain_at_{smallest}": results[arch][s][smallest]["gain"]
                for arch in backbones
                for s in STRATEGIES[1:]
            }
            | {
                f"{arch}/{s}/gain_shrinks": float(gains[arch][s]["shrinks"])
                for arch in backbones
                for s in STRATEGIES[1:]
            }
            | {
                f"{arch}/{s}/gain_over_zero_shot_at_{smallest}": results[arch][s][smallest][
                    "gain_over_zero_shot"
                ]
                for arch in backbones
                for s in STRATEGIES[1:]
                if zero[arch] is not None
            }
            | {f"{arch}/zero_shot/acc": zero[arch] for arch in backbones if zero[arch] is not None},
            step=0,
        )
        tracking.log_artifacts(uri, parent, pngs, "plots")
        tracking.log_artifacts(uri, parent, [Path(results_path)], "results")
    return summary


def _results(
    acc: dict[tuple[str, str, float], list[float]],
    backbones: dict[str, Backbone],
    budgets: list[float],
    labels: dict[float, int],
    zero: dict[str, float | None],
) -> dict[str, dict]:
    """``results[arch][row][budget]``: accuracy mean ± std over seeds, per seed, and for the pretrained
    strategies the gain over scratch (mean ± std of the per-seed paired differences) and over zero-shot
    (``zero[arch]``, the same at every budget: it uses no label; the row is left out when it is ``None``)."""
    results: dict[str, dict] = {}
    for arch in backbones:
        if zero[arch] is not None:
            results[arch] = {
                "zero_shot": {
                    f"{b:g}": {"acc": zero[arch], "acc_std": 0.0, "per_seed": [zero[arch]], "labels": 0}
                    for b in budgets
                }
            }
        for strategy in STRATEGIES:
            for budget in budgets:
                values = acc[arch, strategy, budget]
                mean, std = _summary(values)
                row: dict[str, Any] = {
                    "acc": mean,
                    "acc_std": std,
                    "per_seed": values,
                    "labels": labels[budget],
                }
                if strategy != "scratch":
                    diffs = [a - b for a, b in zip(values, acc[arch, "scratch", budget], strict=True)]
                    row["gain"], row["gain_std"] = _summary(diffs)
                    if zero[arch] is not None:
                        row["gain_over_zero_shot"] = mean - zero[arch]
                results.setdefault(arch, {}).setdefault(strategy, {})[f"{budget:g}"] = row
    return results


def gain_profile(results: dict, budgets: list[float]) -> dict[str, dict[str, dict[str, Any]]]:
    """``gains[arch][strategy]``: the mean gain over scratch at each budget, smallest budget first, and
    ``shrinks``: whether it strictly decreases as labels grow (what pretraining should show)."""
    profile: dict[str, dict[str, dict[str, Any]]] = {}
    for arch, by_strategy in results.items():
        for strategy in STRATEGIES[1:]:
            gains = [by_strategy[strategy][f"{b:g}"]["gain"] for b in sorted(budgets)]
            shrinks = all(a > b for a, b in itertools.pairwise(gains))
            profile.setdefault(arch, {})[strategy] = {"by_budget": gains, "shrinks": shrinks}
    return profile


def write_plots(results: dict, budgets: list[float], labels: dict[float, int], plots_dir: Path) -> list[Path]:
    """``accuracy_vs_budget.png`` and, per architecture, ``ARCH.csv`` (labels, budget, one column per row
    of ``ROWS``; zero-shot empty when there is none) for ``dvc plots``."""
    from sounding import plots
    from sounding.files import write_text

    paths = []
    for arch, by_row in results.items():
        rows = ["labels,budget," + ",".join(ROWS)]
        rows += [
            f"{labels[b]},{b:g},"
            + ",".join(f"{by_row[r][f'{b:g}']['acc']:.6g}" if r in by_row else "" for r in ROWS)
            for b in budgets
        ]
        paths.append(write_text(plots_dir / f"{arch}.csv", "\n".join(rows) + "\n"))
    png = plots.transfer_curves(results, budgets, labels, plots_dir / "accuracy_vs_budget.png")
    return [png, *paths]
