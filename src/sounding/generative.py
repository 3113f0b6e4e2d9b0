"""The conditional GAN stage and honest measures of its samples, judged by a trained classifier
(``gan.judge``, the CNN by default):

- judge accuracy: share of generated samples the judge classifies as the label they were conditioned on;
- Fréchet distance between generated and real test samples in the judge's penultimate-layer features;
- per-class diversity: mean pairwise distance of samples, against the real data's (collapse warning when a
  class falls below ``COLLAPSE_RATIO`` of it);
- reference points: real data (the ceiling) and a naive per-class mean-plus-noise generator (the floor).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sounding.config import RESULT_COMPUTE, Params
from sounding.data.module import TensorDataModule

COLLAPSE_RATIO = 0.5
log = logging.getLogger(__name__)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` ([N, D] each).

    tr((Σa Σb)^½) is taken from the eigenvalues of the symmetric Σa^½ Σb Σa^½, which has the same ones:
    ``scipy.linalg.sqrtm`` of the product warned "singular matrix" whenever a generator's features did
    not span every dimension (ReLU features of a few samples often do not)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def diversity(x: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean pairwise L2 distance between samples of each class."""
    out = np.zeros(num_classes)
    for k in range(num_classes):
        xs = torch.as_tensor(x[y == k]).flatten(1)
        if len(xs) > 1:
            out[k] = float(torch.pdist(xs).mean())
    return out


def naive_samples(x: np.ndarray, y: np.ndarray, y_out: np.ndarray, seed: int) -> np.ndarray:
    """The floor: per class, the mean training signal plus Gaussian noise with the per-position std."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(y_out), *x.shape[1:]), dtype=np.float32)
    for k in np.unique(y_out):
        xs = x[y == k]
        out[y_out == k] = xs.mean(0) + rng.standard_normal(((y_out == k).sum(), *x.shape[1:])) * xs.std(0)
    return out


class Judge:
    """The trained classifier used as a fixed measuring instrument."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net.eval()

    def features(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net.features(torch.as_tensor(x, dtype=torch.float32)).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()


def quality(
    judge: Judge, x: np.ndarray, y: np.ndarray, real_test_features: np.ndarray, real_diversity: np.ndarray
) -> dict[str, float]:
    """All quality figures of one set of samples ``x`` conditioned on ``y``."""
    div = diversity(x, y, len(real_diversity))
    ratio = div / np.maximum(real_diversity, 1e-12)
    return {
        "judge_acc": float((judge.predict(x) == y).mean()),
        "frechet": frechet_distance(judge.features(x), real_test_features),
        "diversity": float(div.mean()),
        "diversity_ratio_min": float(ratio.min()),
    }


class TrainingBatches(TensorDataModule):
    """The GAN's data: training batches only. Its figures come from the judge at each epoch's end
    (``Quality``), so Lightning runs no validation loop (and expects no ``validation_step``)."""

    val_dataloader = None  # Lightning's is_overridden reads None as "not defined"
    test_dataloader = None


def train_gan(
    params: Params,
    data_dir: str | Path,
    judge_dir: str | Path,
    model_dir: str | Path,
    results_path: str | Path,
    plots_dir: str | Path,
    checkpoints: str | Path = "checkpoints",
    progress: bool = True,
) -> dict[str, Any]:
    """Stage ``gan``: train the conditional GAN, measure it each epoch against the references, write outputs."""
    import lightning as L

    from sounding import plots, tracking
    from sounding.data.prepare import load_prepared
    from sounding.errors import BadInput
    from sounding.files import atomic_write, sha256_file, write_json, write_text
    from sounding.models.factory import load_net
    from sounding.models.gan import LitGAN
    from sounding.training import code_version, train_system

    data = load_prepared(data_dir)
    if data.spec.layout != "sequence" or len(data.spec.input_shape) != 1:
        # A study of the pipeline, not a product of it: on data it cannot model it says so and records
        # it, and the pipeline goes on.
        reason = (
            f"the GAN generates one-channel series [N, L]; this data has samples of shape "
            f"{list(data.spec.input_shape)} ({data.spec.layout})"
        )
        summary = {"skipped": reason, "data_sha256": data.sha256}
        write_text(Path(model_dir) / "SKIPPED.txt", reason + "\n")  # the stage's outputs exist for DVC
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        write_json(results_path, summary)
        return summary
    judge_net, judge_config = load_net(Path(judge_dir) / "model.safetensors", Path(judge_dir) / "config.json")
    if tuple(judge_config["input_shape"]) != data.spec.input_shape:
        raise BadInput(
            f"{judge_dir}: the judge was trained on shape {judge_config['input_shape']}, "
            f"the data has {list(data.spec.input_shape)}; retrain it on this data"
        )
    judge = Judge(judge_net)
    g = params.gan
    k = data.spec.num_classes
    real_features = judge.features(data.test.x)
    real_div = diversity(data.test.x, data.test.y, k)
    rng = np.random.default_rng(params.seed)
    ref_idx = rng.choice(len(data.train.y), size=min(len(data.train.y), len(data.test.y)), replace=False)
    y_val = np.repeat(np.arange(k), g.samples_per_class)
    references = {
        "real": quality(judge, data.train.x[ref_idx], data.train.y[ref_idx], real_features, real_div)
        | {"judge_acc": float((judge.predict(data.test.x) == data.test.y).mean())},
        "naive": quality(
            judge,
            naive_samples(data.train.x, data.train.y, y_val, params.seed),
            y_val,
            real_features,
            real_div,
        ),
    }

    class Quality(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, module: LitGAN) -> None:
            figures = quality(judge, module.sample().cpu().numpy(), y_val, real_features, real_div)
            module.log_dict({f"gan/{name}": value for name, value in figures.items()})

    torch.set_num_threads(params.compute.threads)
    L.seed_everything(params.seed, verbose=False)
    system = LitGAN(
        num_classes=k,
        length=data.spec.input_shape[0],
        latent=g.latent,
        channels=g.channels,
        lr_g=g.lr_g,
        lr_d=g.lr_d,
        betas=tuple(g.betas),
        label_smoothing=g.label_smoothing,
        d_steps=g.d_steps,
        ema=g.ema,
        samples_per_class=g.samples_per_class,
        seed=params.seed,
    )
    # A small set gets an epoch of several passes (back-to-back permutations) for ``gan.min_steps``
    # generator steps; a batch is at most the whole set, so it holds no series twice when it is that.
    n_train = len(data.train.y)
    batch = min(params.train.batch_size, n_train)
    epoch_samples = max(n_train, -(-g.min_steps // g.epochs) * batch)
    # The judge is part of the fingerprint: the per-epoch figures in a checkpoint were measured by one judge,
    # and resuming them under another would mix two instruments in one report.
    judge_sha256 = sha256_file(Path(judge_dir) / "model.safetensors")
    fp = (
        params.section_hash("gan", "train.batch_size", *RESULT_COMPUTE)
        + f"-{data.sha256[:8]}-{judge_sha256[:8]}-{code_version()}"
    )
    run_dir = Path(checkpoints) / "gan" / fp
    tags = {"stage": "train", "arch": "gan", "seed": str(params.seed), "data_sha256": data.sha256}
    plots_dir, model_dir = Path(plots_dir), Path(model_dir)
    logged = tracking.section_params(params, "seed", "data", "gan", "train.batch_size", "compute")
    with tracking.resumable_run(
        params, run_dir, f"gan-seed{params.seed}", tags, logged_params=logged
    ) as run_id:
        fitted = train_system(
            params,
            system,
            TrainingBatches(data, batch, params.seed, epoch_samples=epoch_samples),
            run_dir,
            params.seed,
            max_epochs=g.epochs,
            run_id=run_id,
            callbacks=[Quality()],
            progress="gan" if progress else None,
            monitor=None,
        )
        history = fitted.history.rows
        final = {name.removeprefix("gan/"): v for name, v in history[-1].items() if name.startswith("gan/")}
        samples = system.sample().numpy()
        collapsed = [int(c) for c in np.flatnonzero(diversity(samples, y_val, k) < COLLAPSE_RATIO * real_div)]
        if collapsed:
            log.warning(
                "GAN mode collapse suspected for classes %s: diversity below %.0f%% of the real data's",
                collapsed,
                100 * COLLAPSE_RATIO,
            )
        summary = {
            **final,
            "epoch0_frechet": history[0]["gan/frechet"],
            "collapsed_classes": collapsed,
            "references": references,
            "epochs": len(history),
            "generator_steps": len(history) * -(-epoch_samples // batch),
            "train_time_s": fitted.history.train_time_s,
            "data_sha256": data.sha256,
            "judge_sha256": judge_sha256,
            "run_id": run_id,
        }
        tracking.log_metrics(
            params.tracking.uri,
            run_id,
            {
                "final/judge_acc": final["judge_acc"],
                "final/frechet": final["frechet"],
                "ref/real_frechet": references["real"]["frechet"],
                "ref/naive_frechet": references["naive"]["frechet"],
                "ref/naive_judge_acc": references["naive"]["judge_acc"],
            },
            step=len(history),
        )
        pngs = [
            plots.gan_samples(samples, y_val, data.test.x, data.test.y, plots_dir / "samples.png"),
            plots.gan_curves(history, references, plots_dir / "curves.png"),
        ]
        tracking.log_artifacts(params.tracking.uri, run_id, pngs, "plots")
        from safetensors.torch import save_file

        state = {k_: v.contiguous() for k_, v in system.generator_ema.state_dict().items()}
        atomic_write(model_dir / "generator.safetensors", lambda tmp: save_file(state, str(tmp)))
        write_json(
            model_dir / "config.json",
            {
                "latent": g.latent,
                "channels": g.channels,
                "num_classes": k,
                "length": data.spec.input_shape[0],
            },
        )
    write_json(results_path, summary)
    return summary
