"""``fit()``: train one network for one seed with Lightning, resumably, and evaluate it on the test set.

Resume: every epoch ends with ``last.ckpt`` in the run folder (written atomically by Lightning). Rerunning
the same fit finds it and continues, re-attached to the same MLflow run. Lightning does not restore RNG
state, so the shuffling order and the dropout RNG are re-derived from (seed, epoch) at the start of every
epoch: a resumed run sees the same randomness as an uninterrupted one. Epoch metrics are logged to MLflow
just before the checkpoint is written, and an epoch already logged is never logged twice.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sounding import tracking
from sounding.config import RESULT_COMPUTE, Params
from sounding.data.module import TensorDataModule
from sounding.data.prepare import Prepared
from sounding.files import atomic_write
from sounding.models.classifier import LitClassifier
from sounding.models.factory import net_kwargs
from sounding.models.nets.base import Standardize
from sounding.progress import EpochLines, on_terminal

# Lightning sets its loggers to INFO on import; its hardware banner and tips would drown our output.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
# A rerun resumes from its run folder's checkpoints: that the folder is not empty is the point.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


@dataclass
class FitResult:
    """What one fit produced: final metrics, the per-epoch history and where the weights are."""

    arch: str
    seed: int
    metrics: dict[str, float]
    history: list[dict[str, float]]
    checkpoint: str
    run_id: str | None
    n_params: int
    train_time_s: float
    samples_per_s: float
    device: str
    resumed_epochs: int = 0
    """Epochs already done in the checkpoint this fit resumed from (0 for a fresh start)."""


class EpochSeed(Callback):
    """Re-seed torch's RNG (dropout, noise) from (seed, epoch) at each epoch start, for exact resumes.

    Under several processes each rank gets its own stream (rank 0 keeps the single-process one), so ranks
    do not draw the same dropout masks for their different samples.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seed = self.seed * 100_003 + trainer.current_epoch + 7_919_000 * trainer.global_rank
        if pl_module.device.type == "cpu":
            # The same numbers as torch.manual_seed, which also queues CUDA's lazy seeding with a formatted
            # stack trace even on a CPU-only run: 87 µs a call against 1 µs.
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)


class History(Callback):
    """The per-epoch rows of a fit (``epoch``, ``time_s`` and every scalar in ``trainer.callback_metrics``):
    what the plots, the depth study and ``FitResult`` read.

    Stateful: the rows travel inside ``last.ckpt``, so a resumed fit has its whole history, and on resume
    it hands them to the ``RunLogger``, which sends the epochs its MLflow run lacks (a crash between a
    checkpoint and the delivery of its epochs' metrics loses nothing). Place it before the
    ``ModelCheckpoint``: both act at a training epoch's end, and the checkpoint must hold the epoch's row.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.train_time_s = 0.0
        self.resumed_epochs = 0
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.resumed_epochs = len(self.rows)  # restored from the checkpoint before this hook
        if isinstance(trainer.logger, RunLogger):
            trainer.logger.resume(self.rows)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_time_s += time.perf_counter() - self._epoch_start
        pl_module.log("time_s", self.train_time_s)  # to the loggers, as the epoch's other figures
        row = {k: tracking.as_number(float(v)) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        self.rows.append({**row, "epoch": trainer.current_epoch, "time_s": self.train_time_s})

    def state_dict(self) -> dict[str, Any]:
        # The rows as one JSON string: torch.save pickles each Python object separately, and a list of
        # per-epoch dicts pickled that way cost more than an epoch of a small model.
        return {"history": json.dumps(self.rows), "train_time_s": self.train_time_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = json.loads(state_dict["history"])
        self.train_time_s = float(state_dict["train_time_s"])


class RunLogger(Logger):
    """A Lightning ``Logger`` for one MLflow run, written through the tracking writer process.

    Lightning hands it an epoch's metrics in several calls (validation, then the training epoch), each
    with the epoch; they are logged at step = epoch, each key once. They go in batches, every ``flush_s``
    seconds and at the fit's end, to ``tracking``'s writer process, which stores them while training
    goes on: MLflow's SQL store spends about 80 µs of Python per value, a few percent of a small model's
    fit when written in the training process, and a server costs tens of milliseconds per call. An epoch
    the run already holds (a resumed fit re-running the epoch a crash interrupted) is not logged twice.

    Only rank zero has one (other ranks create no run), so its methods are not ``rank_zero_only``: that
    flag is process-global, and a Trainer created earlier in the process may have left it at another rank.
    """

    def __init__(self, uri: str, run_id: str, flush_s: float = 0.5) -> None:
        super().__init__()
        self.uri, self.run_id, self.flush_s = uri, run_id, flush_s
        self._held: set[int] | None = None  # epochs the run held when this fit started
        self._pending: dict[int, dict[str, float]] = {}
        self._sent: dict[int, set[str]] = {}  # keys sent per epoch of this fit
        self._last_flush = time.monotonic()

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Nothing: the run's params are logged when it is created (``tracking.tracked_run``)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = int(metrics["epoch"]) if "epoch" in metrics else int(step or 0)
        self._add(epoch, metrics)
        if time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def resume(self, rows: list[dict[str, float]]) -> None:
        """Send the epochs of ``rows`` (a resumed fit's history) that the run does not hold yet."""
        for row in rows:
            self._add(int(row["epoch"]), row)
        self.flush()

    def _add(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self._held is None:
            self._held = set(tracking.sent_steps(self.uri, self.run_id, "epoch"))
        if epoch in self._held:
            return
        sent = self._sent.setdefault(epoch, set())
        row = self._pending.setdefault(epoch, {})
        row.update({k: float(v) for k, v in metrics.items() if k not in sent})

    def flush(self) -> None:
        """Hand the pending metrics to the writer process (the run's end waits for them to be stored)."""
        if self._pending:
            tracking.send_steps(self.uri, self.run_id, list(self._pending.items()))
            for epoch, row in self._pending.items():
                self._sent[epoch].update(row)
            self._pending = {}
        self._last_flush = time.monotonic()

    def finalize(self, status: str) -> None:
        self.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, then renamed over it: a process killed
    mid-write leaves the previous checkpoint, never a torn one. Lightning's default IO gives the same
    guarantee through fsspec at three times the cost of the write itself for these small checkpoints
    (0.9 vs 0.3 ms), which matters once per epoch. No fsync: resuming after a killed process needs none.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), fsync=False)


def checkpointing(run_dir: Path, monitor: str | None = "val/acc", mode: str = "max") -> list[ModelCheckpoint]:
    """Lightning's ``ModelCheckpoint``s of a fit: with ``monitor``, ``run_dir/best.ckpt`` (the epoch of
    highest ``monitor``, or lowest with ``mode="min"``, the first of equals), then ``run_dir/last.ckpt`` after every epoch, what a rerun
    resumes. Two callbacks, not one with ``save_last``: Lightning 2.6 writes ``last.ckpt`` only in the
    epochs that improve ``monitor``. The best one comes first, so ``last.ckpt`` holds its current state."""
    last = ModelCheckpoint(
        dirpath=run_dir,
        filename="last",
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    if monitor is None:
        return [last]
    best = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    return [best, last]


def build_system(
    params: Params, arch: str, data: Prepared, batch: int | None = None, backbone_lr_scale: float = 1.0
) -> LitClassifier:
    """The LightningModule for ``arch`` on this data, every hyperparameter taken from params, its input
    standardisation (``data.standardize``, recorded by ``prepare``) fitted on the training part.

    ``batch`` is the batch size it will train in, which sets its learning rate (``learning_rate``; default:
    ``batch_size`` of the training part). ``backbone_lr_scale`` multiplies the backbone's learning rate (0
    freezes it; used by transfer).
    """
    t = params.train
    system = LitClassifier(
        arch=arch,
        input_shape=data.spec.input_shape,
        num_classes=data.spec.num_classes,
        layout=data.spec.layout,
        net={**net_kwargs(params, arch), "standardize": data.spec.standardize},
        optimizer=t.optimizer,
        lr=learning_rate(params, batch or batch_size(params, len(data.train.y))),
        weight_decay=t.weight_decay,
        l1=t.l1,
        lr_schedule=t.lr_schedule,
        backbone_lr_scale=backbone_lr_scale,
    )
    if isinstance(system.net.scaler, Standardize):
        system.net.scaler.fit(data.train.x)
    return system


def batch_size(params: Params, n_train: int) -> int:
    """Training batch size on ``n_train`` samples: ``train.batch_size``, smaller when a pass over the data
    would be fewer than ``train.min_batches`` batches (the FCN/ResNet reference code uses a tenth of a
    small training set; one batch of everything would be plain gradient descent)."""
    return max(1, min(params.train.batch_size, math.ceil(n_train / params.train.min_batches)))


def learning_rate(params: Params, batch: int) -> float:
    """Learning rate of a fit in batches of ``batch``: ``train.lr``, meant for batches of
    ``train.batch_size``, scaled by ``train.lr_scaling`` to a smaller batch (a small set's). Without
    it, Adam at 0.01 in batches of 4 left the FCN on ArrowHead at 0.634 ± 0.103 (10 seeds), against 0.777
    ± 0.039 at the scaled 0.002 (docs/benchmarks.md, "Small sets: the learning rate follows the batch")."""
    t = params.train
    ratio = min(batch, t.batch_size) / t.batch_size
    return t.lr * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[t.lr_scaling]


def passes_per_epoch(params: Params, n_train: int) -> int:
    """Passes over the training part in one epoch: 1, or more when ``train.epochs`` single passes would be
    fewer than ``train.min_steps`` optimizer steps."""
    steps_per_pass = math.ceil(n_train / batch_size(params, n_train))
    return max(1, math.ceil(params.train.min_steps / (params.train.epochs * steps_per_pass)))


SELECTIONS = {"best_val": ("val/acc", "max"), "min_train_loss": ("train/loss", "min"), "last": (None, "max")}
"""The checkpoint monitor (metric, mode) of each weight-selection rule."""


def selection(params: Params, n_val: int) -> str:
    """The weights a fit ships: ``train.select``, with ``auto`` deciding on the size of the validation part:
    ``best_val`` with at least ``train.min_val`` samples, else ``min_train_loss`` (the epoch of lowest
    training loss, as the FCN/ResNet reference code selects: on a handful of validation samples the best
    epoch is a lucky one, and a constant learning rate can leave the last epoch in a spike)."""
    select = params.train.select
    if select != "auto":
        return select
    return "best_val" if n_val >= params.train.min_val else "min_train_loss"


def make_trainer(
    params: Params,
    callbacks: list[Callback],
    max_epochs: int | None = None,
    logger: Logger | None = None,
    progress: str | None = None,
    clip_gradients: bool = True,
) -> L.Trainer:
    """A Trainer configured from ``params.compute`` and the clipping of ``params.train`` (``clip_gradients``
    false for manual optimisation, the GAN's, which Lightning does not clip). No sanity check or model
    summary: they cost more than an epoch of these small networks. ``progress`` names the fit in its
    progress (none without it): Lightning's bar on a terminal, ``progress.EpochLines`` off one."""
    c, t = params.compute, params.train
    clip = clip_gradients and t.gradient_clip_val > 0
    if progress is not None and not on_terminal():
        callbacks = [*callbacks, EpochLines(progress)]
    return L.Trainer(
        max_epochs=max_epochs or t.epochs,
        accelerator=c.accelerator,
        devices=c.devices,
        num_nodes=c.num_nodes,
        strategy=c.strategy,
        precision=c.precision,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=logger or False,
        gradient_clip_val=t.gradient_clip_val if clip else None,
        gradient_clip_algorithm=t.gradient_clip_algorithm if clip else None,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        enable_progress_bar=progress is not None,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # only epoch-level values are logged; this silences the "few steps" warning
    )


def process_rank(params: Params) -> tuple[int, int]:
    """(global rank, world size) that ``fit`` will run with in this process, as Lightning derives them
    from the launcher's environment (torchrun, SLURM's srun, MPI, or Lightning's own launcher); (0, 1) for
    one process. Known before any training starts, so that only rank zero creates MLflow runs and writes
    files. A compute section that cannot run here (``accelerator: gpu`` with no GPU, ``devices`` unlike
    the launcher's processes per node) is reported as bad input.
    """
    from lightning.fabric.plugins.environments import TorchElasticEnvironment
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from sounding.errors import BadInput

    try:
        trainer = make_trainer(params, [])
        env = getattr(trainer.strategy, "cluster_environment", None)
        if env is not None:  # Lightning checks this only when it launches the processes itself
            env.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except (MisconfigurationException, ValueError, RuntimeError) as exc:  # RuntimeError: srun's variables
        raise BadInput(f"compute: {exc}") from None
    launched = int(os.environ.get("WORLD_SIZE", "1")) if TorchElasticEnvironment.detect() else 1
    if launched > 1 and trainer.world_size == 1:  # each copy would train alone and track its own run
        raise BadInput(
            f"compute: torchrun started {launched} processes but compute asks for one (strategy "
            f"{params.compute.strategy}, devices {params.compute.devices}); set compute.strategy=ddp and "
            "compute.devices to --nproc_per_node"
        )
    relaunches = trainer.world_size > 1 and env is not None and not env.creates_processes_externally
    if relaunches and not _is_cli(sys.argv[0]):
        # Lightning's own launcher would start one copy of this process's command per extra device: a
        # copy of the `sounding` command is one more rank, a copy of anything else (a Prefect flow, a
        # notebook, pytest) reruns it whole.
        raise BadInput(
            f"compute: {trainer.world_size} processes requested (strategy {params.compute.strategy}, devices "
            f"{params.compute.devices}, num_nodes {params.compute.num_nodes}) from {sys.argv[0]!r}, which "
            "Lightning would re-execute once per device; launch `sounding train` itself with torchrun or "
            "srun, in its own process (docs/cluster.md)"
        )
    return trainer.global_rank, trainer.world_size


def _is_cli(argv0: str) -> bool:
    path = Path(argv0)
    return path.stem == "sounding" or path.parts[-2:] == ("sounding", "cli.py")


def check_checkpoint(path: Path) -> None:
    """``BadInput`` unless ``path`` loads with ``weights_only=True`` (tensors and plain values only): a
    tampered or corrupted resume checkpoint is refused, with what to do, before anything in it runs."""
    import pickle

    from sounding.errors import BadInput

    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol before refusing
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        reason = (
            "it holds objects other than tensors and plain values"
            if isinstance(exc, pickle.UnpicklingError)
            else f"unreadable: {(str(exc).strip() or type(exc).__name__).splitlines()[0][:120]}"
        )
        raise BadInput(
            f"{path}: cannot resume from this checkpoint ({reason}). Checkpoints load with "
            f"weights_only=True, so a tampered file never runs; delete {path.parent} to train this seed "
            "from scratch"
        ) from None


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Within: denormal floats flushed to zero on this thread (x86's FTZ/DAZ flags), restored after, so
    a caller's own arithmetic (numpy's in a notebook, say) keeps IEEE-754 semantics. Without the flush,
    weights and activations that decay towards zero (weight decay, batch norm of near-constant channels)
    reach the denormal range, where each multiply costs about a hundred times more on x86: a default FCN
    fit on MNIST-1D took 239 s, and 52 s with the flush (docs/benchmarks.md, figure 10). Values that
    small change no prediction."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@dataclass
class Fitted:
    """A finished ``train_system``: the trainer, its history and where its checkpoints are."""

    trainer: L.Trainer
    history: History
    best: ModelCheckpoint | None
    """The callback that keeps the best weights by the monitored metric (none without one)."""


def train_system(
    params: Params,
    system: L.LightningModule,
    datamodule: L.LightningDataModule,
    run_dir: Path,
    seed: int,
    *,
    max_epochs: int | None = None,
    run_id: str | None = None,
    callbacks: list[Callback] | None = None,
    progress: str | None = None,
    monitor: str | None = "val/acc",
    mode: str = "max",
) -> Fitted:
    """``trainer.fit`` of ``system``, resuming from ``run_dir/last.ckpt`` when it exists; with ``run_id``,
    epoch metrics go to that MLflow run (``RunLogger``).

    The checkpoint loads with ``weights_only=True``: resuming never unpickles arbitrary objects, even from
    a tampered file. Lightning ends an interrupted fit with SystemExit (SIGTERMException on SIGTERM,
    ``sys.exit(1)`` after Ctrl-C); it is re-raised as KeyboardInterrupt so the MLflow run ends KILLED.
    """
    history, checkpoints = History(), checkpointing(run_dir, monitor, mode)
    logger = RunLogger(params.tracking.uri, run_id) if run_id else None
    trainer = make_trainer(
        params,
        [EpochSeed(seed), *(callbacks or []), history, *checkpoints],
        max_epochs=max_epochs,
        logger=logger,
        progress=progress,
        clip_gradients=system.automatic_optimization,
    )
    resume = run_dir / "last.ckpt"
    if resume.is_file():
        check_checkpoint(resume)
    try:
        with denormals_flushed():
            trainer.fit(
                system,
                datamodule=datamodule,
                ckpt_path=str(resume) if resume.is_file() else None,
                weights_only=True,
            )
    except SystemExit as exc:
        raise KeyboardInterrupt(type(exc).__name__) from None
    finally:
        if logger is not None:
            logger.flush()  # a failed or interrupted fit's epochs too
    return Fitted(trainer, history, checkpoints[0] if monitor else None)


def load_best(system: L.LightningModule, fitted: Fitted) -> int:
    """Load the best weights by the monitored metric into ``system``; their epoch (-1 when there are none)."""
    best = fitted.best.best_model_path if fitted.best is not None else ""
    if not best or not Path(best).is_file():
        return -1
    state = torch.load(best, map_location=system.device, weights_only=True)
    system.load_state_dict(state["state_dict"])
    return int(state["epoch"])


def fit(
    params: Params,
    arch: str,
    seed: int,
    data: Prepared,
    run_dir: str | Path,
    run_id: str | None = None,
    callbacks: list[Callback] | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> FitResult:
    """Train ``arch`` with ``seed`` on ``data``, resuming from ``run_dir/last.ckpt`` when present.

    It runs ``train.epochs`` epochs of ``passes_per_epoch`` passes over the training part (more than one
    on a small set, for ``train.min_steps``). The weights evaluated on test and kept are those ``selection``
    picks: the epoch of best ``val/acc`` (early-stopping model selection; with ``train.patience`` the fit
    stops after that many epochs without a better one), of lowest training loss, or the last. They are saved as
    ``run_dir/model.ckpt``. With ``run_id``, epoch metrics go to that MLflow run.
    ``evaluate=False`` skips the test set (tuning trials must not see it).
    """
    run_dir = Path(run_dir)
    torch.set_num_threads(params.compute.threads)
    L.seed_everything(seed, verbose=False)
    n_train = len(data.train.y)
    passes = passes_per_epoch(params, n_train)
    batch = batch_size(params, n_train)
    system = build_system(params, arch, data, batch)
    datamodule = TensorDataModule(data, batch, seed, epoch_samples=n_train * passes)
    rule = selection(params, len(data.val.y))
    monitor, mode = SELECTIONS[rule]
    patience = params.train.patience
    stopping = (
        [EarlyStopping("val/acc", patience=patience, mode="max")] if rule == "best_val" and patience else []
    )
    fitted = train_system(
        params,
        system,
        datamodule,
        run_dir,
        seed,
        run_id=run_id,
        callbacks=[*(callbacks or []), *stopping],
        monitor=monitor,
        mode=mode,
        progress=f"{arch} seed {seed}" if progress else None,
    )
    trainer, rows = fitted.trainer, fitted.history.rows
    selected = len(rows) - 1
    if monitor and (best := load_best(system, fitted)) >= 0:
        selected = best
    model_ckpt = run_dir / "model.ckpt"
    trainer.save_checkpoint(model_ckpt, weights_only=True)
    metrics: dict[str, float] = {}
    if evaluate:
        # The run's epochs are its steps: the caller logs the test figures with the fit's others.
        trainer.loggers = []
        with denormals_flushed():  # the arithmetic of the fit's validation
            test = trainer.test(system, datamodule=datamodule, verbose=False)[0]
        metrics.update({k: tracking.as_number(float(v)) for k, v in test.items()})
    if rows:
        metrics.update({k: v for k, v in rows[selected].items() if k.startswith(("val/", "train/"))})
    metrics["selected_epoch"] = float(selected)
    train_time_s = fitted.history.train_time_s
    samples = n_train * passes * trainer.current_epoch
    return FitResult(
        arch=arch,
        seed=seed,
        metrics=metrics,
        history=rows,
        checkpoint=str(model_ckpt),
        run_id=run_id,
        n_params=sum(p.numel() for p in system.net.parameters()),
        train_time_s=train_time_s,
        samples_per_s=samples / train_time_s if train_time_s else 0.0,
        device=str(trainer.strategy.root_device),
        resumed_epochs=fitted.history.resumed_epochs,
    )


@functools.cache
def code_version() -> str:
    """Short sha256 of the package's source: a checkpoint written by other code is never resumed."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def fingerprint(params: Params, arch: str, seed: int, data_sha256: str) -> str:
    """Identifies a fit (params that shape it, data, seed and code): only the same fit resumes a checkpoint."""
    return (
        params.section_hash(
            f"models.{arch}",
            "train.epochs",
            "train.batch_size",
            "train.optimizer",
            "train.lr",
            "train.lr_scaling",
            "train.weight_decay",
            "train.l1",
            "train.gradient_clip_val",
            "train.gradient_clip_algorithm",
            "train.select",
            "train.min_batches",
            "train.min_steps",
            "train.min_val",
            "train.patience",
            "train.lr_schedule",
            *RESULT_COMPUTE,
        )
        + f"-{data_sha256[:8]}-{code_version()}-s{seed}"
    )
