"""Leaderboard: every architecture side by side with the classical baselines, against the published MNIST-1D
accuracies."""

from __future__ import annotations

import json
from pathlib import Path

from sounding.errors import BadInput
from sounding.files import load_results, write_text

PUBLISHED_MNIST1D = {"linear": 0.32, "mlp": 0.68, "cnn": 0.94, "rnn": 0.91, "baseline/logreg": 0.32}
"""Test accuracy reported by Greydanus & Kobak for the reference models (rnn = bidirectional GRU; their
logistic regression is the ``linear`` network and scikit-learn's ``baseline/logreg`` alike)."""


def load_baselines(results_dir: str | Path, rows: list[dict]) -> dict:
    """``results_dir/baselines.json``, checked to be of the data the networks of ``rows`` were tested on
    (a comparison across two datasets would mean nothing)."""
    path = Path(results_dir) / "baselines.json"
    if not path.is_file():
        raise BadInput(f"{path} not found: run `sounding baselines` first (the classical baselines)")
    baselines = json.loads(path.read_text())
    stale = [r["arch"] for r in rows if r.get("data_sha256") not in (None, baselines["data_sha256"])]
    if stale:
        raise BadInput(
            f"{path} was computed on data {baselines['data_sha256'][:12]}, but {', '.join(stale)} on other "
            "data: rerun `sounding baselines` (or train them again) on the same prepared data"
        )
    return baselines


def leaderboard(rows: list[dict], source: str, baselines: dict | None = None) -> str:
    """Markdown table, best test accuracy first: the networks of ``rows`` and, given ``baselines`` (the
    ``baselines`` stage's summary), the classical models ranked among them, under a line saying how the
    best network compares with the better classical model."""
    classical = list((baselines or {}).get("baselines", {}).values())
    lines = [
        "# Leaderboard",
        "",
        f"Data: `{source}`, test accuracy as mean ± std over seeds."
        + (" Published: Greydanus & Kobak (MNIST-1D)." if source == "mnist1d" else ""),
        "",
    ]
    if classical and rows:
        lines += [verdict(rows, classical), ""]
    lines += [
        "| rank | architecture | params | test acc | macro-F1 | published | seeds | train time (s) | samples/s "
        "| device | tuning | untuned: test acc, gain |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    entries = [(r["test_acc"], _net_cells(r, source)) for r in rows]
    entries += [(b["test_acc"], _classical_cells(b, source)) for b in classical]
    for rank, (_, cells) in enumerate(sorted(entries, key=lambda e: -e[0]), start=1):
        lines.append(f"| {rank} | " + " | ".join(cells) + " |")
    if classical:
        lines += [
            "",
            f"*classical*: scikit-learn models fit once on train + val ({baselines['n_fit']} samples: the "
            "networks fit on train and select their weights on val; these have nothing to select), no "
            "tuning, deterministic. *params*: weights and biases; for 1-NN, the training values it stores. "
            "*train time*: the fit.",
        ]
    if any(r.get("untuned") for r in rows):
        lines += [
            "",
            "*untuned*: the params' own values, trained on the same seeds beside the tuned ones; *gain*: tuned "
            "minus untuned test accuracy, seed by seed, mean ± its standard error; *same*: tuning kept the "
            "params' values (docs/tuning.md).",
        ]
    lines += ["", "![test accuracy by architecture](leaderboard.png)", ""]
    return "\n".join(lines)


def _net_cells(r: dict, source: str) -> list[str]:
    published = PUBLISHED_MNIST1D.get(r["arch"]) if source == "mnist1d" else None
    return [
        r["arch"],
        f"{r['n_params']:,}",
        f"{r['test_acc']:.3f} ± {r['test_acc_std']:.3f}",
        f"{r['test_f1_macro']:.3f}",
        f"{published:.2f}" if published else "–",
        str(len(r["seeds"])),
        f"{r['train_time_s']:.1f}",
        f"{r['samples_per_s']:,.0f}",
        r["device"],
        _tuned(r),
        _untuned(r),
    ]


def _classical_cells(b: dict, source: str) -> list[str]:
    published = PUBLISHED_MNIST1D.get(b["arch"]) if source == "mnist1d" else None
    stored = " stored" if b["arch"] == "baseline/1nn" else ""
    return [
        f"classical: {b['label']}",
        f"{b['n_params']:,}{stored}",
        f"{b['test_acc']:.3f}",
        f"{b['test_f1_macro']:.3f}",
        f"{published:.2f}" if published else "–",
        "–",
        f"{b['train_time_s']:.2f}",
        "–",
        "cpu",
        "–",
        "–",
    ]


def verdict(rows: list[dict], classical: list[dict]) -> str:
    """One line: the best network (by mean test accuracy) against the better classical baseline, in
    percentage points of test accuracy."""
    net = max(rows, key=lambda r: r["test_acc"])
    base = max(classical, key=lambda b: b["test_acc"])
    gap = round(100 * (net["test_acc"] - base["test_acc"]), 1)
    other = f"the better classical baseline, {base['label']} ({base['test_acc']:.3f})"
    if gap == 0:
        compared = f"ties with {other}"
    else:
        compared = f"{'beats' if gap > 0 else 'trails'} {other} by {abs(gap):.1f} points"
    spread = f" (its std over seeds: {100 * net['test_acc_std']:.1f} points)" if len(net["seeds"]) > 1 else ""
    return f"**Best network: {net['arch']}** ({net['test_acc']:.3f}) {compared}{spread}."


def _untuned(row: dict) -> str:
    """The params' own values on the same seeds, and what the trained values gain over them (mean of the
    per-seed differences ± its standard error, in points): ``0.954 ± 0.004, −0.60 ± 0.30 pp``; ``same`` when
    tuning kept them; ``–`` without a tuning result."""
    u = row.get("untuned")
    if not u:
        return "–"
    if not u["trained"]:
        return "same"
    return f"{u['test_acc']:.3f} ± {u['test_acc_std']:.3f}, {100 * u['gain']:+.2f} ± {100 * u['gain_sem']:.2f} pp"


def _tuned(row: dict) -> str:
    """What tuning decided: ``tuned: dropout 0.12, weight_decay 3.1e-05``, ``baseline kept`` (the params'
    values beat or matched the best trial), ``disabled``, or ``–`` (trained without a tuning result)."""
    adopted = row.get("adopted")
    if adopted == "tuned":
        values = ", ".join(f"{k.rsplit('.', 1)[-1]} {v:.2g}" for k, v in (row.get("tuned") or {}).items())
        return f"tuned: {values}"
    return {
        "baseline": "baseline kept",
        "disabled": "disabled",
    }.get(adopted, "–")


def gan_section(gan: dict) -> str:
    """Markdown: the conditional GAN against the real-data ceiling and the naive floor."""
    real, naive = gan["references"]["real"], gan["references"]["naive"]
    rows = [("conditional GAN", gan), ("real data (ceiling)", real), ("naive mean + noise (floor)", naive)]
    lines = [
        "## Generative: conditional GAN",
        "",
        "Judged by the trained classifier `gan.judge` (the CNN by default): *judge acc* = share of samples "
        "classified as their conditioning label; *Fréchet* = distance to the real test set in the judge's "
        "penultimate features (lower is better).",
        "",
        "| samples | judge acc | Fréchet | diversity (min class ratio) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {r['judge_acc']:.3f} | {r['frechet']:.2f} | {r['diversity_ratio_min']:.2f} |"
        for name, r in rows
    ]
    lines += [
        "",
        f"Fréchet distance after epoch 0: {gan['epoch0_frechet']:.2f}. "
        + (
            f"Collapse warning for classes {gan['collapsed_classes']}."
            if gan["collapsed_classes"]
            else "No class collapsed."
        ),
        "",
        "![samples](../plots/gan/samples.png)",
        "",
    ]
    return "\n".join(lines)


def depth_section(study: dict) -> str:
    """Markdown: the depth study's accuracy grid and gradient ratios at initialisation."""
    rows = study["configs"]
    lines = [
        "## Depth study: vanishing and exploding gradients",
        "",
        "MLPs trained briefly per configuration (`sounding depth`). *ratio* = ‖∇ first layer‖ / ‖∇ last layer‖ "
        "at initialisation: far below 1 means vanishing gradients. Heatmaps: `plots/depth/heatmaps/`.",
        "",
        "| depth | residual | init | clip | test acc | ratio at init |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["depth"], r["residual"], r["init"], r["clip"])):
        acc = "diverged" if r["diverged"] else f"{r['test_acc']:.3f}"
        ratio = "–" if r["init_first_last_ratio"] is None else f"{r['init_first_last_ratio']:.2g}"
        lines.append(
            f"| {r['depth']} | {'yes' if r['residual'] else 'no'} | {r['init']} | "
            f"{r['clip'] or '–'} | {acc} | {ratio} |"
        )
    lines += [
        "",
        "![accuracy against depth](../plots/depth/accuracy_vs_depth.png)",
        "![gradient ratio at init](../plots/depth/init_gradient_ratio.png)",
        "",
    ]
    return "\n".join(lines)


def transfer_section(transfer: dict) -> str:
    """Markdown: test accuracy of the pretrained network as it is (zero-shot), scratch, linear probe and
    fine-tuning at each label budget, with the gains of each pretrained strategy over scratch and over
    zero-shot."""
    lines = [
        "## Transfer: does a pretrained backbone help?",
        "",
        f"Backbones from `{transfer['source']}`; mean ± std test accuracy over seeds {transfer['seeds']}, "
        f"{transfer['steps']} optimizer steps per fit. *zero-shot*: the pretrained network as it is, no "
        "target label. Gains: accuracy − scratch's (paired per seed) / − zero-shot's.",
        "",
        "| arch | budget | labels | zero-shot | scratch | linear probe (gains) | fine-tune (gains) |",
        "|---|---:|---:|---|---|---|---|",
    ]
    for arch, r in transfer["results"].items():
        for budget, labels in transfer["labels"].items():
            zero = r.get("zero_shot")
            cells = [f"{zero[budget]['acc']:.3f}" if zero else "–"]
            cells += [f"{r['scratch'][budget]['acc']:.3f} ± {r['scratch'][budget]['acc_std']:.3f}"]
            for s in ("linear_probe", "finetune"):
                row = r[s][budget]
                over_zero = f" / {row['gain_over_zero_shot']:+.3f}" if "gain_over_zero_shot" in row else ""
                cells.append(f"{row['acc']:.3f} ± {row['acc_std']:.3f} ({row['gain']:+.3f}{over_zero})")
            lines.append(f"| {arch} | {budget} | {labels} | " + " | ".join(cells) + " |")
    if skipped := transfer.get("skipped"):
        lines += ["", *(f"- {arch}: skipped, {why}" for arch, why in skipped.items())]
    lines += ["", "![accuracy against label budget](../plots/transfer/accuracy_vs_budget.png)", ""]
    return "\n".join(lines)


def write_report(results_dir: str | Path, archs: list[str], source: str, out_dir: str | Path) -> Path:
    """Stage ``report``: ``out_dir/leaderboard.md`` and ``leaderboard.png``, from ``results_dir/ARCH.json``
    of each of ``archs`` and ``results_dir/baselines.json`` (both required), plus the GAN, depth and
    transfer sections when their metrics exist."""
    from sounding import plots

    rows = load_results(results_dir, archs)
    baselines = load_baselines(results_dir, rows)
    classical = list(baselines["baselines"].values())
    out_dir = Path(out_dir)
    # The classical bars carry their kind in their label: plots.py stays as it is, since every training
    # stage depends on it and an edit there would retrain everything.
    bars = [(r["arch"], r["arch"], r["test_acc"], r["test_acc_std"]) for r in rows]
    bars += [(f"{_short(b)}\n(classical)", b["arch"], b["test_acc"], 0.0) for b in classical]
    published = {label: PUBLISHED_MNIST1D[arch] for label, arch, *_ in bars if arch in PUBLISHED_MNIST1D}
    plots.bars(
        [label for label, *_ in bars],
        [acc for *_, acc, _ in bars],
        [std for *_, std in bars],
        "test accuracy",
        "Test accuracy: networks (mean ± std over seeds) and classical baselines",
        out_dir / "leaderboard.png",
        published if source == "mnist1d" else None,
    )
    text = leaderboard(rows, source, baselines)
    for name, section in (("gan", gan_section), ("depth", depth_section), ("transfer", transfer_section)):
        path = Path(results_dir) / f"{name}.json"
        if path.is_file():
            study = json.loads(path.read_text())
            skipped = study.get("skipped") and not study.get("results")
            text += "\n" + (skipped_section(name, study) if skipped else section(study))
    return write_text(out_dir / "leaderboard.md", text)


def skipped_section(name: str, study: dict) -> str:
    """Markdown: a study that did not run on this data, and why (``skipped``: a reason, or one per arch)."""
    reasons = study["skipped"]
    lines = [f"## {name.capitalize()}: skipped on this data", ""]
    if isinstance(reasons, dict):
        lines += [f"- {arch}: {why}" for arch, why in reasons.items()]
    else:
        lines.append(str(reasons))
    return "\n".join([*lines, ""])


def _short(baseline: dict) -> str:
    """A classical baseline's bar label."""
    return {"baseline/1nn": "1-NN", "baseline/logreg": "logreg"}.get(baseline["arch"], baseline["arch"])
