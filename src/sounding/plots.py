"""Matplotlib figures (Agg backend, PNG) shared by the stages: curves, confusion matrix, gradient norms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from sounding.files import atomic_write  # noqa: E402


def save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)


def learning_curves(history: list[dict], title: str, path: str | Path) -> Path:
    """Loss (train vs val) and validation accuracy against epoch."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train/loss", "train"), ("val/loss", "validation")):
        ax_loss.plot(epochs, [h.get(key, np.nan) for h in history], label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title=f"{title}: loss")
    ax_loss.legend()
    for key, label in (("train/acc", "train"), ("val/acc", "validation")):
        ax_acc.plot(epochs, [h.get(key, np.nan) for h in history], label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy", ylim=(0, 1))
    ax_acc.legend()
    return save(fig, path)


def confusion_matrix(cm: np.ndarray, title: str, path: str | Path) -> Path:
    """Counts of true class (rows) against predicted class (columns)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    image = ax.imshow(cm, cmap="Blues")
    k = cm.shape[0]
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class", title=title)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.colorbar(image, ax=ax, label="test samples")
    return save(fig, path)


def grad_norm_heatmap(history: list[dict], title: str, path: str | Path) -> Path | None:
    """Mean gradient norm per layer (rows, input first) and epoch (columns), on a log colour scale."""
    layers = [k for k in history[0] if k.startswith("grad_norm/")] if history else []
    if not layers:
        return None
    grid = np.array([[h.get(k, np.nan) for h in history] for k in layers])
    positive = grid[np.isfinite(grid) & (grid > 0)]
    lo, hi = (positive.min(), positive.max()) if positive.size else (1e-8, 1.0)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(layers) + 2))
    image = ax.imshow(
        np.where(grid > 0, grid, np.nan),
        aspect="auto",
        cmap="viridis",
        norm=LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001)),
        interpolation="nearest",
    )
    ax.set_yticks(range(len(layers)), [k.removeprefix("grad_norm/") for k in layers], fontsize=7)
    ax.set(xlabel="epoch", ylabel="layer (input at top)", title=title)
    fig.colorbar(image, ax=ax, label="mean gradient L2 norm (log scale)")
    return save(fig, path)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float],
    ylabel: str,
    title: str,
    path: str | Path,
    references: dict[str, float] | None = None,
) -> Path:
    """Bar chart with error bars and optional reference markers (e.g. published accuracies)."""
    fig, ax = plt.subplots(figsize=(1.4 * len(labels) + 3, 4))
    x = np.arange(len(labels))
    ax.bar(x, values, yerr=errors, capsize=4, color="tab:blue", label="this run (mean ± std)")
    if references:
        ref = [references.get(label, np.nan) for label in labels]
        ax.scatter(x, ref, marker="_", s=900, color="tab:red", zorder=3, label="published")
    for xi, v in zip(x, values, strict=True):
        ax.text(xi, v + 0.01, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels)
    ax.set(ylabel=ylabel, title=title, ylim=(0, 1.05))
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def depth_heatmap(at_init: dict[str, float], history: list[dict], title: str, path: str | Path) -> Path:
    """Gradient norm by layer (rows, input at top) at initialisation and per epoch, log colour scale."""
    layers = list(at_init)
    columns = [[at_init[k] for k in layers]]
    columns += [[h.get(f"grad_norm/{k}", np.nan) for k in layers] for h in history]
    grid = np.array(columns).T
    finite = grid[np.isfinite(grid) & (grid > 0)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (1e-8, 1.0)
    fig, ax = plt.subplots(figsize=(2.2 + 0.5 * grid.shape[1], 1.6 + 0.16 * len(layers)))
    image = ax.imshow(
        np.where(grid > 0, grid, np.nan),
        aspect="auto",
        cmap="viridis",
        interpolation="nearest",
        norm=LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001)),
    )
    ax.set_xticks(range(grid.shape[1]), ["init"] + [str(int(h["epoch"])) for h in history])
    step = max(1, len(layers) // 12)
    ax.set_yticks(range(0, len(layers), step), [layers[i] for i in range(0, len(layers), step)], fontsize=7)
    ax.set(xlabel="epoch (init = one batch before training)", ylabel="layer (input at top)", title=title)
    fig.colorbar(image, ax=ax, label="gradient L2 norm (log)")
    return save(fig, path)


def depth_summary(rows: list[dict], path: str | Path) -> Path:
    """Test accuracy against depth, one panel per initialisation, one line per residual × clipping."""
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fig, axes = plt.subplots(1, len(inits), figsize=(4 * len(inits), 3.8), sharey=True, squeeze=False)
    for ax, init in zip(axes[0], inits, strict=True):
        for (residual, clip), style in zip(
            sorted({(r["residual"], r["clip"]) for r in rows}),
            ("-o", "--s", "-^", "--d", "-v", "--x"),
            strict=False,
        ):
            pts = sorted(
                (r["depth"], r)
                for r in rows
                if r["init"] == init and r["residual"] == residual and r["clip"] == clip
            )
            depths = [d for d, _ in pts]
            accs = [np.nan if r["diverged"] else r["test_acc"] for _, r in pts]
            label = (
                f"{'residual' if residual else 'plain'}, {'clip ' + format(clip, 'g') if clip else 'no clip'}"
            )
            line = ax.plot(depths, accs, style, label=label)[0]
            diverged = [d for d, r in pts if r["diverged"]]
            ax.plot(diverged, [0.02] * len(diverged), "x", color=line.get_color(), markersize=10)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="depth (linear layers)", title=f"init: {init}", ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (× at bottom = diverged)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    return save(fig, path)


def depth_ratio_summary(rows: list[dict], path: str | Path) -> Path:
    """First-layer ÷ last-layer gradient norm at initialisation against depth (log scale)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for residual, init in sorted({(r["residual"], r["init"]) for r in rows}):
        pts = sorted(
            {
                r["depth"]: r["init_first_last_ratio"] or np.nan
                for r in rows
                if r["residual"] == residual and r["init"] == init
            }.items()
        )
        ax.plot(
            [d for d, _ in pts],
            [v for _, v in pts],
            "-o" if residual else "--s",
            label=f"{init}, {'residual' if residual else 'plain'}",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(
        xlabel="depth (linear layers)",
        ylabel="‖∇ first layer‖ / ‖∇ last layer‖ at init",
        title="Vanishing (< 1) and exploding (> 1) gradients at initialisation",
    )
    ax.legend(fontsize=7, ncol=2)
    return save(fig, path)


def gan_samples(
    generated: np.ndarray,
    y_gen: np.ndarray,
    real: np.ndarray,
    y_real: np.ndarray,
    path: str | Path,
    per_class: int = 4,
) -> Path:
    """One row per class: ``per_class`` generated signals (left, blue) beside as many real ones (right, grey)."""
    classes = np.unique(y_gen)
    fig, axes = plt.subplots(
        len(classes),
        2 * per_class,
        figsize=(2 * per_class * 1.3, len(classes) * 0.9),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for row, k in enumerate(classes):
        for col, signal in enumerate(generated[y_gen == k][:per_class]):
            axes[row][col].plot(signal, color="tab:blue", lw=1)
        for col, signal in enumerate(real[y_real == k][:per_class]):
            axes[row][per_class + col].plot(signal, color="dimgrey", lw=1)
        axes[row][0].set_ylabel(str(int(k)), rotation=0, labelpad=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].set_title("generated", loc="left", fontsize=9)
    axes[0][per_class].set_title("real (test)", loc="left", fontsize=9)
    fig.suptitle("Conditional GAN: one row per class", fontsize=10)
    return save(fig, path)


def gan_curves(history: list[dict], references: dict[str, dict], path: str | Path) -> Path:
    """Fréchet distance and judge accuracy per epoch, with the real-data ceiling and the naive floor."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_fd, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in (
        (ax_fd, "frechet", "Fréchet distance (judge features)"),
        (ax_acc, "judge_acc", "judge accuracy"),
    ):
        ax.plot(epochs, [h[f"gan/{key}"] for h in history], label="GAN")
        ax.axhline(references["real"][key], color="tab:green", ls="--", label="real data")
        ax.axhline(references["naive"][key], color="tab:red", ls=":", label="naive mean + noise")
        ax.set(xlabel="epoch", ylabel=label)
        ax.legend(fontsize=8)
    ax_fd.set_yscale("log")
    ax_acc.set_ylim(0, 1)
    return save(fig, path)


def transfer_curves(results: dict, budgets: list[float], labels: dict[float, int], path: str | Path) -> Path:
    """Test accuracy against the number of training labels (log scale), one panel per architecture and one
    line per strategy, mean ± std over seeds."""
    archs = list(results)
    fig, axes = plt.subplots(1, len(archs), figsize=(4.6 * len(archs), 3.9), sharey=True, squeeze=False)
    x = [labels[b] for b in budgets]
    for ax, arch in zip(axes[0], archs, strict=True):
        for strategy, rows in results[arch].items():
            means = [rows[f"{b:g}"]["acc"] for b in budgets]
            stds = [rows[f"{b:g}"]["acc_std"] for b in budgets]
            ax.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=strategy.replace("_", " "))
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{n}\n({b:g})" for n, b in zip(x, budgets, strict=True)], fontsize=7)
        ax.minorticks_off()
        ax.set(xlabel="training labels (fraction)", title=arch, ylim=(0, 1))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (mean ± std over seeds)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    return save(fig, path)
