"""``fit()``: train one network for one seed with Lightning, resumably, and evaluate it on the test set.

Resume: every epoch ends with ``last.ckpt`` in the run folder (written atomically by Lightning). Rerunning
the same fit finds it and continues, re-attached to the same MLflow run. Lightning does not restore RNG
state, so the shuffling order and the dropout RNG are re-derived from (seed, epoch) at the start of every
epoch: a resumed run sees the same randomness as an uninterrupted one. Epoch metrics are logged to MLflow
just before the checkpoint is written, and an epoch already logged is never logged twice.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from sounding import tracking
from sounding.config import Params
from sounding.data.module import TensorDataModule
from sounding.data.prepare import Prepared
from sounding.files import atomic_write
from sounding.models.classifier import LitClassifier
from sounding.models.factory import net_kwargs

# Lightning sets its loggers to INFO on import; its hardware banner and tips would drown our output.
for _name in ("lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
# Validation metrics are sums already reduced over processes (LitClassifier): no sync_dist needed.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level in distributed")


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
            # stack trace even on a CPU-only run: 87 µs a call against 1 µs, about 1% of a logistic epoch.
            torch.default_generator.manual_seed(seed)
        else:
            torch.manual_seed(seed)


class EpochCheckpoint(Checkpoint):
    """Records each epoch's metrics, keeps the best-``val/acc`` weights, writes ``last.ckpt`` (after an
    epoch at least ``every_s`` seconds after the previous write, and after the last epoch), and sends the
    metrics to MLflow in batches (every ``flush_s`` seconds and at the end). The writer process stores a
    batch while training goes on, so the run's end waits only for the last ``flush_s`` of metrics: with
    5 s, a 3-second MLP fit waited 0.1 s at its end for all of its 1,650 values.

    Being a ``Checkpoint``, Lightning calls it after the LightningModule's own epoch-end hook, so the
    epoch's train metrics are complete. History and best weights travel inside the checkpoint, which makes
    MLflow catch up after a crash: on resume, epochs in the history but not in the run are logged, and an
    epoch already in the run is never logged again (a re-run epoch yields the same values).
    """

    def __init__(
        self,
        path: Path,
        uri: str | None = None,
        run_id: str | None = None,
        flush_s: float = 0.5,
        every_s: float = 0.0,
    ):
        self.path, self.uri, self.run_id, self.flush_s, self.every_s = path, uri, run_id, flush_s, every_s
        self._last_write = -math.inf  # the first epoch is always written
        self.history: list[dict[str, float]] = []
        self.train_time_s = 0.0
        self.best: dict[str, Any] = {"epoch": -1, "val/acc": -1.0, "state": None}
        self.resumed_epochs = 0
        self._epoch_start = 0.0
        self._logged: set[int] = set()
        self._pending: list[dict[str, float]] = []
        self._last_flush = 0.0

    def _tracking(self, trainer: L.Trainer) -> bool:
        return bool(self.run_id) and trainer.is_global_zero

    def _flush(self) -> None:
        if self._pending:
            tracking.send_steps(self.uri, self.run_id, [(int(r["epoch"]), r) for r in self._pending])
            self._logged.update(int(r["epoch"]) for r in self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.resumed_epochs = len(self.history)  # restored from the checkpoint before this hook
        if self._tracking(trainer):
            # What the run holds, with an earlier fit of it in this process stored first.
            self._logged = set(tracking.sent_steps(self.uri, self.run_id, "epoch"))
            self._pending = [row for row in self.history if int(row["epoch"]) not in self._logged]
            self._flush()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.train_time_s += time.perf_counter() - self._epoch_start
        epoch = trainer.current_epoch
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        row.update(getattr(pl_module, "epoch_metrics", {}))
        row.update(epoch=epoch, time_s=self.train_time_s)
        self.history.append(row)
        if row.get("val/acc", -1.0) > self.best["val/acc"]:
            state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            self.best = {"epoch": epoch, "val/acc": row["val/acc"], "state": state}
        if self._tracking(trainer):
            if epoch not in self._logged:
                self._pending.append(row)
            if time.monotonic() - self._last_flush >= self.flush_s:
                self._flush()
        last = epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        if last or time.monotonic() - self._last_write >= self.every_s:
            trainer.save_checkpoint(self.path, weights_only=False)  # full state: optimizer, loops, callbacks
            self._last_write = time.monotonic()

    # The last metrics are handed over, not waited for: the run's end (``tracking.tracked_run``) waits,
    # so the test evaluation and the plots, or the next tuning trial, overlap their writing.
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._tracking(trainer):
            self._flush()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._tracking(trainer):
            self._flush()

    def state_dict(self) -> dict[str, Any]:
        # The history as one JSON string: torch.save handles each Python object separately, and a list of
        # per-epoch dicts pickled that way cost more than the epoch itself for small models.
        return {"history": json.dumps(self.history), "train_time_s": self.train_time_s, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = json.loads(state_dict["history"])
        self.train_time_s = float(state_dict["train_time_s"])
        self.best = dict(state_dict["best"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, then renamed over it: a process killed
    mid-write leaves the previous checkpoint, never a torn one. Lightning's default IO gives the same
    guarantee through fsspec at three times the cost of the write itself for these small checkpoints
    (0.9 vs 0.3 ms), which matters once per epoch. No fsync: resuming after a killed process needs none.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), fsync=False)


class EpochProgress(Callback):
    """One progress bar over epochs (cheaper and more readable than a per-step bar for small models)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tqdm.auto import tqdm

        if trainer.is_global_zero:
            self.bar = tqdm(
                total=trainer.max_epochs,
                initial=trainer.current_epoch,
                desc=self.desc,
                unit="epoch",
                leave=False,
                dynamic_ncols=True,
                disable=None,
            )  # no bar off a TTY

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            acc = trainer.callback_metrics.get("val/acc")
            self.bar.set_postfix({"val/acc": f"{float(acc):.3f}"} if acc is not None else {})
            self.bar.update(1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bar is not None:
            self.bar.close()


def build_system(params: Params, arch: str, data: Prepared, backbone_lr_scale: float = 1.0) -> LitClassifier:
    """The LightningModule for ``arch`` on this data, every hyperparameter taken from params.

    ``backbone_lr_scale`` multiplies the backbone's learning rate (0 freezes it; used by transfer).
    """
    t = params.train
    return LitClassifier(
        arch=arch,
        input_shape=data.spec.input_shape,
        num_classes=data.spec.num_classes,
        layout=data.spec.layout,
        net=net_kwargs(params, arch),
        optimizer=t.optimizer,
        lr=t.lr,
        weight_decay=t.weight_decay,
        l1=t.l1,
        lr_schedule=t.lr_schedule,
        backbone_lr_scale=backbone_lr_scale,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
    )


def make_trainer(params: Params, callbacks: list[Callback], max_epochs: int | None = None) -> L.Trainer:
    """A Trainer configured from ``params.compute``; no Lightning logger or bar, no validation loop (the
    LightningModules validate inside their training epoch: ``LitClassifier``). (Clipping is the
    LightningModule's too: Lightning refuses Trainer-level clipping under manual optimisation.)"""
    c, t = params.compute, params.train
    return L.Trainer(
        max_epochs=max_epochs or t.epochs,
        accelerator=c.accelerator,
        devices=c.devices,
        num_nodes=c.num_nodes,
        strategy=c.strategy,
        precision=c.precision,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_checkpointing=True,  # our EpochCheckpoint is the checkpoint callback (no default one added)
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
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


def resume_fit(
    trainer: L.Trainer, system: L.LightningModule, datamodule: L.LightningDataModule, checkpoint: Path
) -> None:
    """``trainer.fit``, resuming from ``checkpoint`` when it exists.

    The checkpoint loads with ``weights_only=True``: resuming never unpickles arbitrary objects, even from
    a tampered file. Lightning ends an interrupted fit with SystemExit (SIGTERMException on SIGTERM,
    ``sys.exit(1)`` after Ctrl-C); it is re-raised as KeyboardInterrupt so the MLflow run ends KILLED.
    """
    if checkpoint.is_file():
        check_checkpoint(checkpoint)
    try:
        trainer.fit(
            system,
            datamodule=datamodule,
            ckpt_path=str(checkpoint) if checkpoint.is_file() else None,
            weights_only=True,
        )
    except SystemExit as exc:
        raise KeyboardInterrupt(type(exc).__name__) from None


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

    With ``train.select: best_val`` the weights of the epoch with the best ``val/acc`` are evaluated on
    test and kept (early-stopping model selection); with ``last``, the final epoch's. They are saved as
    ``run_dir/model.ckpt``. With ``run_id``, epoch metrics go to that MLflow run. ``evaluate=False``
    skips the test set (tuning trials must not see it).
    """
    run_dir = Path(run_dir)
    torch.set_num_threads(params.compute.threads)
    L.seed_everything(seed, verbose=False)
    system = build_system(params, arch, data)
    datamodule = TensorDataModule(data, params.train.batch_size, seed, group_batches=True)
    recorder = EpochCheckpoint(
        run_dir / "last.ckpt",
        params.tracking.uri if run_id else None,
        run_id,
        every_s=params.train.checkpoint_every_s,
    )
    extra = [EpochProgress(f"{arch} seed {seed}")] if progress else []
    trainer = make_trainer(params, [EpochSeed(seed), recorder, *extra, *(callbacks or [])])
    resume = run_dir / "last.ckpt"
    resume_fit(trainer, system, datamodule, resume)
    selected = len(recorder.history) - 1
    if params.train.select == "best_val" and recorder.best["state"] is not None:
        system.load_state_dict(recorder.best["state"])
        selected = recorder.best["epoch"]
    model_ckpt = run_dir / "model.ckpt"
    trainer.save_checkpoint(model_ckpt, weights_only=True)
    metrics: dict[str, float] = {}
    if evaluate:
        test = trainer.test(system, datamodule=datamodule, verbose=False)[0]
        metrics.update({k: float(v) for k, v in test.items()})
    if recorder.history:
        metrics.update(
            {k: v for k, v in recorder.history[selected].items() if k.startswith(("val/", "train/"))}
        )
    metrics["selected_epoch"] = float(selected)
    samples = len(data.train.y) * trainer.current_epoch
    return FitResult(
        arch=arch,
        seed=seed,
        metrics=metrics,
        history=recorder.history,
        checkpoint=str(model_ckpt),
        run_id=run_id,
        n_params=sum(p.numel() for p in system.net.parameters()),
        train_time_s=recorder.train_time_s,
        samples_per_s=samples / recorder.train_time_s if recorder.train_time_s else 0.0,
        device=str(trainer.strategy.root_device),
        resumed_epochs=recorder.resumed_epochs,
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
            "train.weight_decay",
            "train.l1",
            "train.gradient_clip_val",
            "train.gradient_clip_algorithm",
            "train.select",
            "train.lr_schedule",
            "compute",
        )
        + f"-{data_sha256[:8]}-{code_version()}-s{seed}"
    )
