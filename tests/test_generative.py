"""GAN: a manual-optimisation step, the quality metrics, and the stage on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sounding.config import Params
from sounding.data.prepare import load_prepared
from sounding.generative import diversity, frechet_distance, naive_samples, train_gan
from sounding.models.factory import build_net, save_net
from sounding.models.gan import LitGAN
from sounding.models.nets.gan import Generator


def test_frechet_distance_is_zero_for_the_same_data_and_large_for_noise() -> None:
    rng = np.random.default_rng(0)
    real = rng.standard_normal((2000, 8)) @ rng.standard_normal((8, 8)) + 3.0
    assert abs(frechet_distance(real, real)) < 1e-6
    other_half = frechet_distance(real[:1000], real[1000:])
    noise = frechet_distance(real, rng.standard_normal((2000, 8)))
    assert other_half < 1.0 < 20 * other_half < noise


def test_diversity_and_naive_generator() -> None:
    x = np.stack([np.zeros((5, 4)), np.eye(5, 4)]).reshape(10, 4)
    y = np.repeat([0, 1], 5)
    div = diversity(x, y, 2)
    assert div[0] == 0 and div[1] > 0  # class 0 is collapsed to one point
    fake = naive_samples(x, y, np.array([1, 1, 0]), seed=0)
    assert fake.shape == (3, 4) and np.allclose(fake[2], 0)


def _one_step(gan: LitGAN) -> dict[str, torch.Tensor]:
    """Fit ``gan`` on one tiny batch; return its state from before."""
    import lightning as L

    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = {k: v.clone() for k, v in gan.state_dict().items()}
    x, y = torch.randn(6, 10), torch.tensor([0, 1, 2, 0, 1, 2])
    trainer.fit(
        gan, train_dataloaders=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=6)
    )
    return before


def test_one_manual_optimisation_step_updates_both_networks_and_the_average() -> None:
    gan = LitGAN(num_classes=3, length=10, latent=4, channels=4, d_steps=2, ema=0.5)
    before = _one_step(gan)
    changed = {k for k, v in gan.state_dict().items() if not torch.equal(v, before[k])}
    for net in ("generator.", "discriminator.", "generator_ema."):
        assert any(k.startswith(net) for k in changed), net
    weight = "project.weight"  # ema 0.5: the average lies halfway between its old and the new weights
    halfway = (before[f"generator_ema.{weight}"] + gan.state_dict()[f"generator.{weight}"]) / 2
    assert torch.allclose(gan.state_dict()[f"generator_ema.{weight}"], halfway)
    assert torch.equal(gan.z_val, before["z_val"])  # the validation noise is fixed
    assert gan.sample().shape == (3 * 100, 10)  # samples_per_class (default 100) per class


def test_ema_zero_samples_the_latest_generator() -> None:
    gan = LitGAN(num_classes=3, length=10, latent=4, channels=4, ema=0.0)
    _one_step(gan)
    with torch.no_grad():
        assert torch.equal(gan.sample(), gan.generator(gan.z_val, gan.y_val))


def test_the_discriminator_scores_the_label() -> None:
    torch.manual_seed(0)
    gan = LitGAN(num_classes=3, length=10, latent=4, channels=4)
    x = torch.randn(4, 10)
    scores = [gan.discriminator(x, torch.full((4,), k)) for k in range(3)]
    assert not torch.allclose(scores[0], scores[1]) and not torch.allclose(scores[1], scores[2])


def _judge(prepared: Path, folder: Path, seed: int = 0) -> Path:
    """An untrained CNN saved as a judge: enough to exercise the stage."""
    data = load_prepared(prepared)
    torch.manual_seed(seed)
    judge = build_net("cnn", data.spec.input_shape, data.spec.num_classes, "sequence")
    save_net(
        judge,
        {"arch": "cnn", "input_shape": [40], "num_classes": 10, "layout": "sequence", "net": {}},
        folder,
    )
    return folder


def test_stage_writes_model_metrics_plots(params: Params, prepared: Path, tmp_path: Path) -> None:
    # 432 training series in batches of 100 are 5 steps a pass: 2 epochs of 15 steps make gan.min_steps.
    small = params.with_overrides({"gan.epochs": 2, "gan.min_steps": 30, "gan.samples_per_class": 5})
    summary = train_gan(
        small,
        prepared,
        _judge(prepared, tmp_path / "judge"),
        tmp_path / "models",
        tmp_path / "gan.json",
        tmp_path / "plots",
        progress=False,
    )
    saved = json.loads((tmp_path / "gan.json").read_text())
    assert saved["epochs"] == 2 and saved["generator_steps"] == 30
    assert 0 <= saved["judge_acc"] <= 1 and saved["frechet"] > 0
    assert {"real", "naive"} == set(saved["references"]) and summary["epoch0_frechet"] > 0
    config = json.loads((tmp_path / "models" / "config.json").read_text())
    shipped = Generator(**config)  # the config rebuilds the generator its weights belong to
    shipped.load_state_dict(load_file(str(tmp_path / "models" / "generator.safetensors")))
    assert (tmp_path / "plots" / "samples.png").is_file() and (tmp_path / "plots" / "curves.png").is_file()


def test_another_judge_does_not_resume_figures_measured_by_the_first(
    params: Params, prepared: Path, tmp_path: Path
) -> None:
    small = params.with_overrides({"gan.epochs": 1, "gan.samples_per_class": 5})
    first, second = (
        train_gan(
            small,
            prepared,
            _judge(prepared, tmp_path / f"judge{seed}", seed),
            tmp_path / "models",
            tmp_path / "gan.json",
            tmp_path / "plots",
            checkpoints=tmp_path / "checkpoints",
            progress=False,
        )
        for seed in (0, 1)
    )
    assert first["judge_sha256"] != second["judge_sha256"] and first["run_id"] != second["run_id"]
    assert first["frechet"] != second["frechet"]  # the same generator, measured in each judge's own features
