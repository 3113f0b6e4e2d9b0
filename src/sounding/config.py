"""Typed parameters: the one reader of ``params.yaml``.

``load_params(path, overrides)`` validates the YAML (plus ``-S key.path=value`` overrides) into a frozen
``Params`` object. Unknown keys are rejected; every problem is reported with its key path, the bad value,
what is allowed and, for a typo, the closest valid key. Nothing below the CLI reads the YAML itself.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sounding.errors import BadInput

ARCHS = ("linear", "mlp", "cnn", "rnn", "fcn")
"""Classifier architectures that ``sounding train`` accepts."""

Arch = Literal["linear", "mlp", "cnn", "rnn", "fcn"]
Init = Literal["default", "xavier", "kaiming", "orthogonal"]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Probability = Annotated[float, Field(ge=0, lt=1)]
NonNegative = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """Base of every params section: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class Mnist1dArgs(Section):
    """Arguments of ``mnist1d.data.make_dataset``. The defaults generate the published benchmark data."""

    num_samples: PositiveInt = 5000
    """Series generated, train and test together."""
    train_split: Fraction = 0.8
    """Share of them in the published train split (the rest is the test split)."""
    template_len: PositiveInt = 12
    """Length of the ten digit templates the series are drawn from."""
    padding: tuple[int, int] = (36, 60)
    """Zeros appended to each template before it is stretched: a count drawn from this range."""
    scale_coeff: NonNegative = 0.4
    """Random scaling of each series."""
    max_translation: Annotated[int, Field(ge=0)] = 48
    """Largest random shift along the time axis."""
    corr_noise_scale: NonNegative = 0.25
    """Strength of the correlated (smooth) noise added."""
    iid_noise_scale: NonNegative = 2e-2
    """Strength of the independent noise added at each step."""
    shear_scale: NonNegative = 0.75
    """Random shear of each series."""
    shuffle_seq: bool = False
    """Shuffle the time steps (the same permutation for every series): no local structure left."""
    final_seq_length: PositiveInt = 40
    """Length of every series after resampling."""
    seed: int = 42
    """Seed of the generator: the published data with 42."""


class DataParams(Section):
    """Where the data comes from and how it is split."""

    source: Literal["mnist1d", "digits", "npz", "ts", "table"] = "mnist1d"
    """``mnist1d`` (generated locally, the published benchmark data) or ``digits`` (scikit-learn's 8×8
    images), or your file at ``path``: ``npz``, ``ts`` (UCR/UEA .ts) or ``table`` (CSV or Parquet);
    formats: docs/data.md."""
    val_fraction: Fraction = 0.1
    """Share of the training part held out, stratified, for validation (at least one series per class)."""
    test_fraction: Fraction = 0.2
    """Share held out for testing when the source has no test split of its own (digits, npz without
    x_test, ts or table without ``test_path``); at least one series per class."""
    path: str = "data/raw/dataset.npz"
    """The file read by the npz, ts and table sources."""
    test_path: str | None = None
    """The test file of the ts and table sources (same format as ``path``); null: a test part is carved."""
    label_column: str = "label"
    """The table column holding the class labels; every other column is a time step, in column order."""
    npz_layout: Literal["sequence", "image"] = "sequence"
    """How a rank-3 ``x`` in a user .npz is read: [N, C, L] sequences or [N, H, W] images."""
    standardize: Literal["auto", "none", "channel", "series"] = "auto"
    """Scaling of the inputs, fitted on the training part and saved inside every model (so predict and
    serving take raw values): ``channel`` (each channel to mean 0, std 1), ``series`` (each series on its
    own, the UCR/UEA archive's convention) or ``none``. ``auto``: ``none`` for the built-in benchmarks
    (mnist1d, digits: their published results use raw inputs), ``channel`` for a user's data."""

    @property
    def standardize_mode(self) -> str:
        """``standardize`` with ``auto`` resolved for this source."""
        if self.standardize != "auto":
            return self.standardize
        return "none" if self.source in ("mnist1d", "digits") else "channel"

    mnist1d: Mnist1dArgs = Mnist1dArgs()
    """The ``mnist1d`` source's generator arguments."""


class LinearParams(Section):
    """Logistic regression on the flattened input: the baseline every network must beat."""


class MLPParams(Section):
    """Feed-forward network. The defaults are the reference 40→100→100→10 MLP with one residual layer."""

    hidden: PositiveInt = 100
    """Units of every hidden layer."""
    depth: Annotated[int, Field(ge=2)] = 3
    """Number of linear layers, the output layer included."""
    residual: bool = True
    """Skip connections around every hidden→hidden layer."""
    dropout: Probability = 0.0
    """Dropout after every hidden activation (tuned by ``sounding tune``)."""
    init: Init = "default"
    """Weight initialisation: PyTorch's ``default``, ``xavier``, ``kaiming`` or ``orthogonal``."""


class CNNParams(Section):
    """Convolutional network: Conv1d for sequences, Conv2d for images. Defaults: the reference CNN."""

    channels: PositiveInt = 25
    """Channels of every convolution layer."""
    kernels: Annotated[list[PositiveInt], Field(min_length=1)] = [5, 3, 3]
    """Kernel size of each convolution layer, one layer per entry."""
    stride: PositiveInt = 2
    """Stride of every convolution layer."""
    dropout: Probability = 0.0
    """Dropout on the flattened features before the classifier (tuned by ``sounding tune``)."""
    init: Init = "default"
    """Weight initialisation: PyTorch's ``default``, ``xavier``, ``kaiming`` or ``orthogonal``."""


class RNNParams(Section):
    """Recurrent network over the time axis. Defaults: the reference bidirectional GRU, hidden 6."""

    cell: Literal["gru", "lstm"] = "gru"
    """Recurrent cell: ``gru`` or ``lstm``."""
    hidden: PositiveInt = 6
    """Hidden units per direction."""
    layers: PositiveInt = 1
    """Stacked recurrent layers."""
    bidirectional: bool = True
    """Read the series both ways; both directions' outputs at every step feed the classifier."""
    dropout: Probability = 0.0
    """Dropout on the outputs before the classifier, and between stacked layers (tuned by ``sounding tune``)."""
    init: Init = "default"
    """Weight initialisation: PyTorch's ``default``, ``xavier``, ``kaiming`` or ``orthogonal``."""


class FCNParams(Section):
    """Fully convolutional network (conv + batch norm + ReLU blocks, global average pooling) for series of
    any length and channels: the FCN baseline of the time-series literature, narrower by default."""

    channels: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64, 32]
    """The published FCN has 128, 256, 128: several times the CPU time a step, for small sets that a
    quarter of the width already fits."""
    kernels: Annotated[list[PositiveInt], Field(min_length=1)] = [7, 5, 3]
    """Odd, so "same" padding is symmetric (the published 8 makes PyTorch pad a copy of the input)."""
    dropout: Probability = 0.0
    """Dropout on the pooled features before the classifier (tuned by ``sounding tune``)."""
    init: Init = "default"
    """Weight initialisation: PyTorch's ``default``, ``xavier``, ``kaiming`` or ``orthogonal``."""

    @model_validator(mode="after")
    def _one_kernel_per_block(self) -> FCNParams:
        if len(self.channels) != len(self.kernels):
            raise ValueError(
                f"channels ({len(self.channels)} blocks) and kernels ({len(self.kernels)}) must have the "
                "same length: one kernel per block"
            )
        return self


class ModelsParams(Section):
    """One section per architecture."""

    linear: LinearParams = LinearParams()
    """Logistic regression: no settings."""
    mlp: MLPParams = MLPParams()
    """The feed-forward network."""
    cnn: CNNParams = CNNParams()
    """The convolutional network."""
    rnn: RNNParams = RNNParams()
    """The recurrent network."""
    fcn: FCNParams = FCNParams()
    """The fully convolutional network."""


class TrainParams(Section):
    """Optimisation, shared by every architecture."""

    archs: Annotated[list[Arch], Field(min_length=1)] = list(ARCHS)
    """Architectures the pipeline tunes, trains and compares (DVC's ``foreach``)."""
    n_seeds: PositiveInt = 3
    """Seeds trained per architecture: ``seed``, ``seed + 1``, …; metrics report mean ± std."""
    epochs: PositiveInt = 150
    """Epochs per fit (150 × 36 steps on MNIST-1D, the published budget of about 6000 steps)."""
    batch_size: PositiveInt = 100
    """Largest batch (``min_batches`` makes it smaller on a small set)."""
    min_batches: PositiveInt = 10
    """Fewest batches a pass over the training part is cut into: a small set trains in batches of a tenth
    of it rather than ``batch_size`` (MNIST-1D's 3600 samples keep batches of 100)."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """``adam``, ``adamw`` (decoupled weight decay) or ``sgd`` (momentum 0.9)."""
    lr: Annotated[float, Field(gt=0)] = 1e-2
    """Learning rate of batches of ``batch_size``; a smaller batch (a small set, ``min_batches``) learns at
    a rate scaled by ``lr_scaling``."""
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    """How ``lr`` follows a batch smaller than ``batch_size``: ``sqrt`` multiplies it by √(batch ÷
    batch_size) (the square-root rule for Adam-like optimizers), ``linear`` by batch ÷ batch_size (SGD's
    rule), ``none`` keeps it. MNIST-1D's batches of 100 keep 0.01; ArrowHead's 32 series, in batches of 4,
    train at 0.002."""
    lr_schedule: Literal["constant", "cosine"] = "constant"
    """``cosine`` decays the learning rate to zero over ``epochs``."""
    weight_decay: NonNegative = 5e-4
    """L2 strength. Coupled (added to the gradient) for adam and sgd; decoupled for adamw. The published
    reference uses 0; without it every architecture overfits within a few dozen epochs."""
    l1: NonNegative = 0.0
    """L1 penalty on the weights, added to the loss."""
    gradient_clip_val: NonNegative = 0.0
    """0 disables clipping."""
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    """Clip by global ``norm`` or by ``value``, by the Lightning Trainer (after unscaling under AMP)."""
    min_steps: Annotated[int, Field(ge=0)] = 2000
    """Fewest optimizer steps a fit takes: on a small training part an epoch is several passes over it (45
    series in batches of 100 are one step a pass). The MNIST-1D default, 150 epochs of 36 steps, is above
    it and unchanged."""
    select: Literal["auto", "best_val", "min_train_loss", "last"] = "auto"
    """Which epoch's weights are tested and shipped: the best validation accuracy (early-stopping
    selection), the lowest training loss (the FCN/ResNet reference code's rule), or the last epoch's.
    ``auto``: ``best_val`` when the validation part holds at least ``min_val`` samples, else
    ``min_train_loss`` (a choice among epochs on a few validation samples keeps a lucky epoch; docs/data.md)."""
    min_val: PositiveInt = 100
    """Validation samples below which ``select: auto`` selects on training loss and tuning judges trials by
    cross-validation (``tune.folds``)."""
    patience: PositiveInt | None = None
    """Early stopping: end a fit after this many epochs without a better ``val/acc`` (when weights are
    selected on validation); null: train the whole budget."""

    @field_validator("archs")
    @classmethod
    def _unique_archs(cls, archs: list[str]) -> list[str]:
        if len(set(archs)) != len(archs):
            raise ValueError("each architecture may appear once")
        return archs


class ComputeParams(Section):
    """Where training runs. ``auto`` picks a GPU when there is one."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    """Lightning's accelerator: ``auto`` picks a GPU when there is one."""
    devices: PositiveInt | Literal["auto"] = 1
    """Devices per node (``auto``: all); more than one trains with DDP."""
    num_nodes: PositiveInt = 1
    """Machines (a SLURM job or torchrun across nodes: docs/cluster.md)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Lightning's strategy: ``auto``, ``ddp`` or ``fsdp``."""
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    """``32``, or mixed precision on a GPU: ``bf16-mixed``, ``16-mixed``."""
    threads: PositiveInt = 1
    """torch CPU threads per process. On these small models 2 are no faster than 1 but for the CNN (1.07×,
    figure 8 of docs/benchmarks.md), while ``workers`` keep every core busy."""
    workers: PositiveInt | Literal["auto"] = "auto"
    """Processes that run independent fits side by side: the seeds of ``train``, the fits of ``transfer``,
    the configurations of ``depth``. ``auto``: one per GPU when training runs on GPUs, else one per core
    this process may use. Seeds and depth configurations give the results of a serial run (1), as tested."""


RESULT_COMPUTE = tuple(
    f"compute.{key}" for key in ("accelerator", "devices", "num_nodes", "strategy", "precision", "threads")
)
"""The compute keys a result may depend on: ``compute.workers`` only decides how many fits run at once."""


class DepthParams(Section):
    """The depth study: short MLP trainings over depth × residual × init × clipping (``sounding depth``)."""

    depths: Annotated[list[Annotated[int, Field(ge=2)]], Field(min_length=1)] = [2, 8, 32]
    """MLP depths, in linear layers."""
    residual: Annotated[list[bool], Field(min_length=1)] = [False, True]
    """Without and with skip connections."""
    inits: Annotated[list[Init], Field(min_length=1)] = ["default", "xavier", "kaiming", "orthogonal"]
    """Weight initialisations compared."""
    clip: Annotated[list[NonNegative], Field(min_length=1)] = [0.0, 1.0]
    """Gradient-norm clipping values; 0 means no clipping."""
    epochs: PositiveInt = 4
    """Epochs per configuration: enough to see gradients vanish, explode or flow."""
    hidden: PositiveInt = 100
    """Units of every hidden layer."""
    lr: Annotated[float, Field(gt=0)] = 1e-2
    """Learning rate of every configuration (adam)."""


class GanParams(Section):
    """The class-conditional GAN (``sounding gan``), judged by a trained classifier (never trained against
    it)."""

    judge: Arch = "cnn"
    """The trained architecture that judges the samples (its accuracy on them, and its features for the
    Fréchet distance); one of ``train.archs``."""
    latent: PositiveInt = 32
    """Size of the noise vector the generator starts from."""
    channels: Annotated[int, Field(ge=2)] = 32
    """Convolution channels of the generator and the discriminator (their first layers have half)."""
    lr_g: Annotated[float, Field(gt=0)] = 2e-3
    """Generator learning rate (adam)."""
    lr_d: Annotated[float, Field(gt=0)] = 2e-3
    """Discriminator learning rate (adam)."""
    betas: tuple[Probability, Probability] = (0.5, 0.999)
    """Adam's betas for both networks (0.5 is the usual GAN choice)."""
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.1
    """One-sided: real samples are labelled ``1 - label_smoothing`` for the discriminator."""
    d_steps: PositiveInt = 1
    """Discriminator updates per generator update."""
    ema: Probability = 0.999
    """Decay per generator step of the weight average that is sampled, measured and shipped; 0: the latest
    weights."""
    epochs: PositiveInt = 150
    """Training epochs (quality is measured at the end of each)."""
    min_steps: Annotated[int, Field(ge=0)] = 5000
    """Generator steps at least: on a small training set an epoch is several passes over it. The weight
    average keeps ``ema ** steps`` of its initial weights, so it needs thousands of steps to move (MNIST-1D
    gets 5,400 from its 36 batches in 150 epochs)."""
    samples_per_class: Annotated[int, Field(ge=2)] = 100
    """Fixed validation noise: samples generated per class each epoch to measure quality."""


class RegistryParams(Section):
    """The promotion gate of ``sounding register``: a challenger replaces ``@champion`` only on evidence."""

    prefix: str = "sounding"
    """Registered models are named ``PREFIX-ARCH``; the best across architectures ``PREFIX-best``."""
    margin: Annotated[float, Field(ge=0, lt=1)] = 0.005
    """Minimum test-accuracy gain over the champion."""
    alpha: Fraction = 0.05
    """Significance level of the exact McNemar test on the paired test predictions."""
    floor: Fraction = 0.2
    """Accuracy a first version needs to become champion when there is none."""


class Range(Section):
    """A search interval ``[low, high]``, sampled on a log scale when ``log``. Integer bounds give an
    integer parameter (``hidden: {low: 4, high: 16}``)."""

    low: int | float
    """Lower bound."""
    high: int | float
    """Upper bound."""
    log: bool = False
    """Sample on a log scale (``low`` must be positive)."""

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0 (got {self.low})")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


class SearchSpace(Section):
    """What ``sounding tune`` searches. A range set to ``null`` is not tuned (the params value is kept)."""

    dropout: Range | None = Range(low=0.0, high=0.5)
    """``models.ARCH.dropout``; architectures without dropout (linear) skip it."""
    weight_decay: Range | None = Range(low=1e-6, high=1e-2, log=True)
    """``train.weight_decay`` (L2)."""
    gradient_clip_val: Range | None = Range(low=0.0, high=2.0)
    """``train.gradient_clip_val`` (0 = no clipping), with ``train.gradient_clip_algorithm``."""
    lr: Range | None = None
    """``train.lr``, optional (e.g. ``{low: 1e-3, high: 3e-2, log: true}``)."""
    extras: dict[Arch, dict[str, Range]] = {}
    """Architecture-specific ranges over ``models.ARCH`` keys, e.g. ``{rnn: {hidden: {low: 4, high: 16}}}``."""

    @field_validator("dropout")
    @classmethod
    def _dropout_is_probability(cls, r: Range | None) -> Range | None:
        if r is not None and not (0 <= r.low and r.high < 1):
            raise ValueError(f"dropout must lie in [0, 1) (got low {r.low}, high {r.high})")
        return r

    @field_validator("weight_decay", "gradient_clip_val", "lr")
    @classmethod
    def _non_negative(cls, r: Range | None) -> Range | None:
        if r is not None and r.low < 0:
            raise ValueError(f"must be non-negative (got low {r.low})")
        return r

    @field_validator("extras")
    @classmethod
    def _known_model_keys(cls, extras: dict[str, dict[str, Range]]) -> dict[str, dict[str, Range]]:
        for arch, ranges in extras.items():
            allowed = sorted(ModelsParams.model_fields[arch].annotation.model_fields)
            for key in ranges:
                if key not in allowed or key == "dropout":
                    raise ValueError(
                        f"models.{arch} has no tunable key {key!r}; allowed: "
                        f"{', '.join(k for k in allowed if k != 'dropout') or 'none'}"
                    )
        return extras


class TuneParams(Section):
    """``sounding tune ARCH``: TPE search with pruning, run before ``train@ARCH`` when enabled."""

    enabled: bool = True
    """When false, ``tune`` writes an empty result and ``train`` uses params as they are."""
    n_trials: PositiveInt = 10
    """Trials per study, counted as complete + pruned (failed ones are retried, not counted); fewer when no
    further trial could change the outcome ([tuning.md](tuning.md): `settled`)."""
    timeout: Annotated[float, Field(gt=0)] | None = None
    """Seconds after which no new trial starts (per ``sounding tune`` call); null = no limit."""
    epochs: PositiveInt | None = None
    """Epochs per trial; ``null`` means ``train.epochs``: regularisation is judged at the training length it
    is chosen for."""
    epochs_by_arch: dict[Arch, PositiveInt] = {"rnn": 30, "fcn": 30}
    """Exceptions to ``epochs``, for the architectures whose epochs cost the most on a CPU."""
    pruner: Literal["median", "hyperband", "none"] = "hyperband"
    """Stops unpromising trials on each epoch's ``val/acc`` (``hyperband``, ``median``) or never (``none``); what
    it saves and costs: figure 3 of docs/benchmarks.md."""
    warmup_epochs: Annotated[int, Field(ge=0)] = 1
    """Epochs a trial always runs before it may be pruned (hyperband: its minimum resource, at least 1)."""
    startup_trials: PositiveInt = 4
    """Random trials before TPE models the space; also trials before the median pruner acts."""
    baseline: bool = True
    """Trial 0 evaluates the params' own values: the baseline the best trial must beat by ``min_gain``."""
    min_gain: Annotated[float, Field(ge=0, le=1)] = 0.01
    """``val/acc`` the best trial must gain over the baseline trial for its values to be adopted, counted
    in validation samples (0.01 of 400 is 4: a gain of exactly 4 samples is adopted); below it, ``train``
    keeps the params' values. The validation split is small (400 samples by default: one
    sample is 0.25 pp) and a study's best is the maximum of many noisy values, so smaller gains are
    mostly luck and did not carry over to the test set."""
    confirm_seeds: Annotated[int, Field(ge=0)] = 2
    """Fresh seeds on which a best trial that passed ``min_gain`` is checked before adoption: its values and
    the baseline's are trained again on seeds ``seed + train.n_seeds``, … (as long as a trial, judged on
    validation), and are adopted only if their gain over the baseline, paired seed by seed, still reaches
    ``min_gain`` less noise: its mean less one standard error (with two seeds, the smaller gain). The
    study's best won a selection among many noisy scores; these fits did not. A fit that fails counts as
    accuracy 0. 0 adopts on the study's best alone."""
    folds: Annotated[int, Field(ge=2)] = 5
    """Folds of the cross-validation that judges trials when the validation part holds fewer than
    ``train.min_val`` samples (a choice among trials on a handful of validation samples is luck): the
    training and validation parts are pooled and cut into this many stratified folds (fewer when a class
    has fewer samples), each fit on the others; a trial's value is the share of the pooled samples the
    fit that held them out classified right. Such trials are not pruned."""
    storage: str | None = None
    """Optuna storage URL. Default: ``sqlite:///tuning/optuna.db``. PostgreSQL for ``sounding tune`` on
    several machines sharing one study."""
    batch: PositiveInt = 2
    """Trials asked together, from the same finished trials, and trained side by side (``compute.workers``
    processes). Part of what a study means: the tuned values depend on it, not on the processes."""
    heartbeat_s: PositiveInt = 10
    """Trial heartbeat: a trial silent for ``grace_s`` (its process died) is marked FAIL and re-queued."""
    grace_s: PositiveInt = 30
    """Seconds without a heartbeat after which a running trial counts as dead."""
    max_retry: Annotated[int, Field(ge=0)] = 1
    """Times an unfinished trial (its process died or was interrupted) is re-queued with the same params
    (it resumes its checkpoint)."""
    space: SearchSpace = SearchSpace()
    """The search space."""

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("sqlite:///", "postgresql://", "postgresql+")):
            raise ValueError("must be a sqlite:///PATH or postgresql://USER@HOST/DB URL")
        return url


TransferArch = Literal["mlp", "cnn", "rnn", "fcn"]
"""Architectures whose backbone holds weights that can be pretrained (``linear``'s has none)."""
TRANSFER_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
MLFLOW_MODEL_URI_PREFIXES = ("models:/", "runs:/")
"""How an MLflow model URI starts: a registered model (``models:/``) or a run's logged one (``runs:/``)."""


class TransferParams(Section):
    """Pretrained-backbone transfer (``sounding pretrain``, ``sounding transfer``).

    Each architecture is trained on fractions of the target's training labels three ways: from scratch,
    as a linear probe on the frozen pretrained backbone, and fine-tuned whole with a lower backbone
    learning rate; both pretrained strategies start from the source network's head or from a new one
    (``head``). Seeds are the pipeline's (``seed``, …, ``train.n_seeds`` of them).
    """

    archs: Annotated[list[TransferArch], Field(min_length=1)] = ["cnn", "mlp"]
    """Architectures pretrained and transferred."""
    source: str = "pretrain"
    """Where the pretrained backbones come from: ``pretrain`` (the ``pretrain`` stage's models), an
    MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/RUN_ID/model``), or a
    file: ``.safetensors`` with its ``config.json`` beside it, a Lightning ``.ckpt`` of Sounding, or a
    ``.pt``/``.pth`` state dict with ``config.json`` beside it (both loaded with ``weights_only=True``).
    ``{arch}`` in a URI or path is replaced by each architecture."""
    budgets: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)] = [
        0.01,
        0.05,
        0.2,
        1.0,
    ]
    """Fractions of the target's training labels, each drawn stratified and seeded (at least one per class)."""
    steps: PositiveInt = 1000
    """Optimizer steps per fit, whatever the budget: every strategy and budget gets the same compute.
    Rounded down to a multiple of ``evals`` (each validation check follows ``steps // evals`` steps)."""
    evals: PositiveInt = 25
    """Validation checks per fit, evenly spaced; the best one's weights are tested (``train.select``)."""
    head: Literal["auto", "pretrained", "new"] = "auto"
    """Where ``linear_probe`` and ``finetune`` start their head: ``pretrained`` keeps the source network's
    classifier (the source must have the target's classes, in the same order, as MNIST-1D variants do);
    ``new`` initialises one as scratch's, for a source with other classes; ``auto``: ``pretrained`` when
    the source's head fits the target's classes, else ``new``."""
    backbone_lr_scale: Annotated[float, Field(gt=0, le=1)] = 0.1
    """``finetune``: the backbone learns at ``train.lr × backbone_lr_scale``, the head at ``train.lr``."""
    pretrain_epochs: PositiveInt = 30
    """Epochs of the ``pretrain`` stage on the source data."""
    source_data: DataParams = DataParams(
        mnist1d=Mnist1dArgs(
            num_samples=10000, scale_coeff=0.6, corr_noise_scale=0.4, shear_scale=1.0, seed=1234
        )
    )
    """The ``pretrain`` stage's dataset, in the form of ``data``. Default: a larger MNIST-1D generated with
    another seed and more noise, shear and scale variation than the target, so there is a domain shift."""

    def source_for(self, arch: str, pretrained_dir: str | Path) -> str:
        """What ``source`` names for ``arch``: an MLflow model URI, or the path of a weights file that exists
        (``pretrain``: the ``pretrain`` stage's ``PRETRAINED_DIR/ARCH/model.safetensors``). Raises
        ``BadInput`` for a missing file; what a file or URI holds is checked where it is read."""
        where = self.source.replace("{arch}", arch)
        if where.startswith(MLFLOW_MODEL_URI_PREFIXES):
            return where
        if where == "pretrain":
            path = Path(pretrained_dir) / arch / "model.safetensors"
            if not path.is_file():
                raise BadInput(
                    f"{path} not found: run `sounding pretrain` first, or set transfer.source to an MLflow "
                    "URI or a checkpoint file"
                )
            return str(path)
        if not Path(where).is_file():
            raise BadInput(f"transfer.source: {where} not found")
        return where

    @field_validator("archs", "budgets")
    @classmethod
    def _unique(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError("each value may appear once")
        return values

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str) -> str:
        if source == "pretrain" or source.startswith(MLFLOW_MODEL_URI_PREFIXES):
            return source
        if source.lower().endswith(TRANSFER_FILE_SUFFIXES):
            return source
        raise ValueError(
            "source must be 'pretrain', an MLflow URI (models:/NAME@ALIAS, runs:/RUN_ID/model) or a file "
            f"ending in {', '.join(TRANSFER_FILE_SUFFIXES)}"
        )


class RetrainParams(Section):
    """The Prefect retraining flow (``pipelines/retrain.py``: ``sounding retrain``, ``sounding schedule``),
    which runs the stages of ``dvc.yaml`` through DVC."""

    max_workers: PositiveInt = 2
    """Most stage commands running at once (independent stages, e.g. ``train@cnn`` beside ``train@mlp``)."""
    retries: Annotated[int, Field(ge=0)] = 3
    """Retries of a stage whose command exits 69: a service (tracking server or database) that did not
    answer. Any other failure (bad input, a divergence) is final at once."""
    retry_delay_s: NonNegative = 10.0
    """First retry delay; each further retry waits twice as long (exponential backoff)."""
    timeout_s: Annotated[float, Field(gt=0)] = 7200.0
    """Seconds a run may take; past them its stage commands are stopped and the run ends failed."""
    notify: str = ""
    """Who hears of a failed, timed-out or crashed run, through a Prefect notification block: empty for
    nobody; a webhook URL (``http(s)://…``: Prefect's Custom Webhook block posts ``{"subject", "text"}``
    JSON to it); or a block saved in Prefect, ``TYPE/NAME`` (``slack-webhook/ops``, ``custom-webhook/ops``,
    …: made in the Prefect UI, and keeps a secret URL out of this file)."""

    @field_validator("notify")
    @classmethod
    def _notify_target(cls, target: str) -> str:
        if target and not (
            target.startswith(("http://", "https://")) or re.fullmatch(r"[a-z0-9-]+/[\w.-]+", target)
        ):
            raise ValueError(
                "notify must be empty (no notifications), a webhook URL (http:// or https://) or a saved "
                "Prefect notification block as TYPE/NAME, e.g. slack-webhook/ops"
            )
        return target


class TrackingParams(Section):
    """MLflow. The default is a sqlite file at the repository root: no server needed."""

    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking and registry store: a relative sqlite path is anchored on the workspace (the outermost
    DVC repository), so DVC's experiment copies log to the same store; or a server
    (``http://127.0.0.1:5000``)."""
    experiment: str = "sounding"
    """MLflow experiment of the training runs; the studies log to ``EXPERIMENT-tuning``, ``-depth``,
    ``-transfer``."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    """Seconds a tracking server or database may take to answer before the command stops with exit 69
    (a service unavailable: retry later), checked before any work; later requests to a server are bounded
    by it too, with two retries, instead of MLflow's default of minutes."""


class Params(Section):
    """Everything that shapes a result. One ``seed`` seeds data splits, initialisation and shuffling."""

    seed: int = 42
    """The one seed: data splits, initialisation, shuffling and dropout; seeds of repeated fits are ``seed``,
    ``seed + 1``, …."""
    data: DataParams = DataParams()
    """The data source and its split."""
    models: ModelsParams = ModelsParams()
    """Architecture settings."""
    train: TrainParams = TrainParams()
    """Optimisation, shared by every architecture."""
    depth: DepthParams = DepthParams()
    """The depth study."""
    gan: GanParams = GanParams()
    """The conditional GAN."""
    registry: RegistryParams = RegistryParams()
    """The promotion gate."""
    tune: TuneParams = TuneParams()
    """Hyperparameter tuning with Optuna."""
    transfer: TransferParams = TransferParams()
    """The transfer study."""
    compute: ComputeParams = ComputeParams()
    """Where and how training runs."""
    tracking: TrackingParams = TrackingParams()
    """MLflow."""
    retrain: RetrainParams = RetrainParams()
    """The Prefect retraining flow."""

    @model_validator(mode="after")
    def _judge_is_trained(self) -> Params:
        if self.gan.judge not in self.train.archs:
            raise ValueError(
                f"gan.judge is {self.gan.judge!r}, which train.archs ({', '.join(self.train.archs)}) does not "
                "train; set gan.judge to one of them"
            )
        return self

    def tune_epochs(self, arch: str) -> int:
        """Epochs of one tuning trial of ``arch``."""
        return self.tune.epochs_by_arch.get(arch) or self.tune.epochs or self.train.epochs

    def seeds(self) -> list[int]:
        """The training seeds: ``seed``, ``seed + 1``, … (``train.n_seeds`` of them)."""
        return [self.seed + i for i in range(self.train.n_seeds)]

    def section_hash(self, *paths: str) -> str:
        """Short sha256 of the named sections (dotted paths), for fingerprints and cache keys."""
        payload = {p: _get_path(self.model_dump(mode="json"), p) for p in paths}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> Params:
        """A validated copy with dotted-path overrides applied (``{"train.lr": 0.1}`` or ``["train.lr=0.1"]``)."""
        raw = self.model_dump(mode="json")
        items = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        for key, value in items.items():
            _set_path(raw, key, value)
        return validate_params(raw, source="overrides")


def _get_path(tree: dict, path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def _set_path(tree: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            # Unknown or scalar parents are created so validation reports the bad key with a suggestion.
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``key.path=value`` strings; values are YAML (``2``, ``true``, ``[1, 2]``, ``0.5``)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"override {item!r} must look like key.path=value, e.g. -S train.lr=0.001")
        try:
            parsed[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as exc:
            raise BadInput(f"override {item!r}: the value is not valid YAML ({exc})") from exc
    return parsed


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc``'s parent, for typo suggestions."""
    model: Any = Params
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _is_field(part: Any) -> bool:
    """Pydantic adds union-member tags such as ``constrained-int`` to error locations; real keys are identifiers."""
    return isinstance(part, int) or str(part).isidentifier()


def _describe(loc: tuple, errors: list[dict]) -> str:
    path = ".".join(str(p) if _is_field(p) else repr(p) for p in loc) or "(top level)"
    if errors[0]["type"] == "extra_forbidden":
        model = _model_at(loc)
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean '{'.'.join(str(p) for p in loc[:-1] + (close[0],))}'?" if close else ""
        return f"{path}: unknown key{hint or '.'} Allowed keys here: {', '.join(allowed)}"
    allowed = " or ".join(dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors))
    got = errors[0].get("input")
    if isinstance(got, dict):  # a check across a section's keys (or sections), whose message names them
        return f"{path}: {allowed}" if loc else allowed
    return f"{path}: {allowed} (got {got!r})"


def _format_errors(exc: ValidationError) -> str:
    grouped: dict[tuple, list[dict]] = {}
    for error in exc.errors():
        loc = tuple(p for p in error["loc"] if _is_field(p))
        if error["type"] == "extra_forbidden":  # the unknown key itself, whatever it is ("", "a b", 3)
            loc = tuple(p for p in error["loc"][:-1] if _is_field(p)) + error["loc"][-1:]
        grouped.setdefault(loc, []).append(error)
    return "\n".join(f"  - {_describe(loc, errors)}" for loc, errors in grouped.items())


def validate_params(raw: Any, source: str = "params") -> Params:
    """Validate a raw mapping into ``Params``; raise ``BadInput`` listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BadInput(f"{source}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise BadInput(f"invalid parameters in {source}:\n{_format_errors(exc)}") from None


ENVIRONMENT = {"MLFLOW_TRACKING_URI": "tracking.uri", "MLFLOW_EXPERIMENT_NAME": "tracking.experiment"}
"""MLflow's own environment variables, when set, replace these params (a ``-S`` override still wins): a
cluster job's environment names the shared MLflow server while ``params.yaml`` keeps the local store."""


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read ``path``, apply the ``ENVIRONMENT`` variables that are set, then ``key.path=value`` overrides,
    and validate."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"params file {path} not found (pass --params PATH)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise BadInput(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise BadInput(f"{path}: expected a mapping of sections at the top level")
    for variable, key in ENVIRONMENT.items():
        if os.environ.get(variable):
            _set_path(raw, key, os.environ[variable])
    for key, value in parse_overrides(overrides or []).items():
        _set_path(raw, key, value)
    return validate_params(raw, source=str(path))
