"""Command line: one command per pipeline stage. argv and params.yaml are read here and nowhere below.

Heavy libraries (lightning, mlflow) are imported inside the commands that need them, so ``--help`` and
bad-input errors answer at once. ``BadInput`` anywhere becomes a one-paragraph message and exit code 2;
``ServiceUnavailable`` (a tracking server or database that does not answer: retry later) one line and 69.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from sounding.config import ARCHS, Params, load_params
from sounding.errors import BadInput, ServiceUnavailable
from sounding.files import check_writable, published_together, write_json, write_json_folder
from sounding.startup import defer_full_collections

app = typer.Typer(
    help="Sounding: train, tune, compare and ship neural-network architectures reproducibly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="Parameters file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-S", help="Override a parameter: key.path=value.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
HEADLINE = "Headline metrics JSON (DVC's metrics file: a few numbers)."
HEADLINE_FOLDER = "Headline metrics folder (DVC's metrics output): MODEL.json, a few numbers each."
RESULTS = "Full results JSON (per seed, run ids, hashes), read by report and register."


def _params(path: Path, overrides: list[str] | None, tracked: bool = True) -> Params:
    """The params of a command; for one that tracks (``tracked``), after checking that the tracking store
    answers (exit 69 at once, not after minutes of MLflow's retries)."""
    params = load_params(path, overrides or [])
    if tracked:
        from sounding import tracking

        tracking.check_store(params.tracking)
    return params


def _check_prepared(data: Path) -> None:
    """Refuse a missing or unreadable prepared folder before the command imports torch and Lightning (3-5 s
    of start-up); its files are verified against the manifest when they are loaded."""
    from sounding.data.prepare import read_manifest

    read_manifest(data)


def _check_exists(path: Path, remedy: str) -> None:
    """Refuse an input file that is not there before the command imports torch and Lightning (5-8 s of
    start-up); what it holds is checked when it is read."""
    if not path.is_file():
        raise BadInput(f"{path} not found: {remedy}")


_held: list[int] = []  # workspace holds of this process (``repro.hold_for_command``), released at exit


def _hold(command: str) -> None:
    """Refuse a stage command run by hand while a pipeline run writes the same outputs (exit 2)."""
    from sounding.repro import hold_for_command

    fd = hold_for_command(command)
    if fd is not None:
        _held.append(fd)


def _check_arch(arch: str, allowed: tuple[str, ...] = ARCHS) -> None:
    if arch not in allowed:
        raise BadInput(f"unknown architecture {arch!r}; allowed: {', '.join(allowed)}")


@app.command()
def prepare(
    out: Annotated[Path, typer.Option(help="Folder for train/val/test.npz and manifest.json.")] = Path(
        "data/prepared"
    ),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Generate or load the data source, split it and write it with a sha256 manifest."""
    _hold("sounding prepare")
    check_writable(out)
    from sounding import stages

    manifest = stages.prepare(_params(params_path, overrides, tracked=False), out)
    counts = {name: info["shape"]["x"] for name, info in manifest["files"].items()}
    typer.echo(f"prepared {manifest['source']} in {out}: {counts}, sha256 {manifest['sha256'][:12]}")
    if padded := manifest["args"].get("padded"):
        typer.echo(_padding(padded))
    for note in manifest.get("notes", []):
        typer.echo(f"{note} (manifest.json: notes)")


def _padding(padded: dict) -> str:
    """One line saying which series ``sources.load_ts`` padded, and to what."""
    files = padded["files"]
    counts = ", ".join(f"{f['padded']} of {f['series']} in {Path(p).name}" for p, f in files.items())
    shortest = min(f["shortest"] for f in files.values())
    return (
        f"series of {shortest} to {padded['length']} values: padded at the end to {padded['length']} with "
        f"each channel's mean over the training file ({counts}; manifest.json: args.padded)"
    )


@app.command("example-data")
def example_data(
    name: Annotated[str, typer.Argument(help="A UCR/UEA set bundled with aeon, e.g. ItalyPowerDemand.")],
    out: Annotated[Path, typer.Option(help="Folder for NAME_TRAIN.ts and NAME_TEST.ts.")] = Path("data/raw"),
) -> None:
    """Copy a UCR/UEA set bundled with aeon (no network) and print the params that prepare it."""
    import shlex

    from sounding.data.examples import copy_example

    train, test, raw = copy_example(name, out)
    x, x_test, classes = raw.x, raw.x_test, raw.classes or ()
    shape = f"{x.shape[1]} channels of length {x.shape[2]}" if x.ndim == 3 else f"length {x.shape[1]}"
    padded = f"\n{_padding(raw.args['padded'])}" if "padded" in raw.args else ""
    typer.echo(
        f"copied {train.name} and {test.name} into {out}: {len(x)} train and {len(x_test)} test series "
        f"({shape}), {len(classes)} classes{padded}\n"
        "prepare them with:\n"
        f"  sounding prepare -S data.source=ts -S {shlex.quote(f'data.path={train}')} "
        f"-S {shlex.quote(f'data.test_path={test}')}\n"
        f"or set in params.yaml:\n  data:\n    source: ts\n    path: {train}\n    test_path: {test}"
    )


@app.command()
def train(
    arch: Annotated[str, typer.Argument(help=f"Architecture: {', '.join(ARCHS)}.")],
    data: Annotated[Path, typer.Option(help="Prepared data folder.")] = Path("data/prepared"),
    model_dir: Annotated[
        Path | None, typer.Option(help="Model output folder.", show_default="models/ARCH")
    ] = None,
    metrics: Annotated[
        Path | None, typer.Option(help="Headline metrics JSON, DVC's.", show_default="metrics/ARCH.json")
    ] = None,
    results: Annotated[
        Path | None, typer.Option(help="Full results JSON.", show_default="results/ARCH.json")
    ] = None,
    plots: Annotated[Path | None, typer.Option(help="Plots folder.", show_default="plots/ARCH")] = None,
    seeds: Annotated[int | None, typer.Option(help="Number of seeds (overrides train.n_seeds).")] = None,
    tuned: Annotated[
        Path | None, typer.Option(help="A `sounding tune` result (best.json) to train with.")
    ] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train ARCH on every seed, evaluate on test, write model, metrics and plots, track in MLflow."""
    _hold(f"sounding train {arch}")
    _check_arch(arch)
    model_dir = model_dir or Path("models") / arch
    metrics = metrics or Path("metrics") / f"{arch}.json"
    results = results or Path("results") / f"{arch}.json"
    plots = plots or Path("plots") / arch
    check_writable(model_dir, metrics, results, plots)
    extra = [f"train.n_seeds={seeds}"] if seeds is not None else []
    params = _params(params_path, (overrides or []) + extra)
    _check_prepared(data)
    if tuned is not None:
        _check_exists(tuned, f"run `sounding tune {arch}` first")
    from sounding import stages

    result = stages.train_architecture(
        params,
        arch,
        data,
        model_dir,
        results,
        plots,
        progress=not quiet,
        tuned=tuned,
        metrics_path=metrics,
    )
    applied = ", ".join(f"{k}={v:.3g}" for k, v in result["tuned"].items())
    # Under several processes every rank reports the metrics it holds (synchronised: they must agree).
    rank = f"[rank {result['rank']}/{result['processes']}] " if result["processes"] > 1 else ""
    typer.echo(
        (f"{arch}: tuned {applied}\n" if applied else "")
        + f"{rank}{arch}: test accuracy {result['test_acc']:.4f} ± {result['test_acc_std']:.4f} "
        f"over {len(result['seeds'])} seed(s)"
    )
    untuned = result.get("untuned") or {}
    if untuned.get("trained"):
        typer.echo(
            f"{rank}{arch}: untuned (the params' values, same seeds) {untuned['test_acc']:.4f} ± "
            f"{untuned['test_acc_std']:.4f}; tuning gains {untuned['gain']:+.4f} ± {untuned['gain_sem']:.4f} "
            "(paired by seed, ± its standard error)"
        )
    if rank:
        for s in result["seeds"]:
            keys = ("test/acc", "test/loss", "val/acc", "train/loss")
            shown = ", ".join(f"{k} {s[k]:.6g}" for k in keys if s.get(k) is not None)
            typer.echo(
                f"{rank}{arch} seed {s['seed']}: {shown}; resumed after {s['resumed_epochs']} epoch(s)"
            )


@app.command()
def baselines(
    data: Annotated[Path, typer.Option(help="Prepared data folder.")] = Path("data/prepared"),
    metrics: Annotated[Path, typer.Option(help=HEADLINE_FOLDER)] = Path("metrics/baselines"),
    results: Annotated[Path, typer.Option(help=RESULTS)] = Path("results/baselines.json"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Classical baselines for the leaderboard: logistic regression and 1-NN (Euclidean), fit on train + val,
    scored on test, tracked in MLflow."""
    _hold("sounding baselines")
    check_writable(metrics, results)
    params = _params(params_path, overrides)
    _check_prepared(data)
    from sounding import headline
    from sounding.baselines import run_baselines
    from sounding.tracking import held_until_published

    with (
        held_until_published(params.tracking.uri),
        published_together(metrics, results) as (metrics_out, results_out),
    ):
        summary = run_baselines(params, data, results_out)
        write_json_folder(metrics_out, headline.baselines(summary))
    for r in summary["baselines"].values():
        typer.echo(
            f"{r['label']}: test accuracy {r['test_acc']:.4f}, macro-F1 {r['test_f1_macro']:.4f}, "
            f"fit {r['train_time_s']:.2f} s on {summary['n_fit']} train + val samples"
            + ("" if r.get("converged", True) else f" (not converged in {r['n_iter']} iterations)")
        )


@app.command()
def tune(
    arch: Annotated[str, typer.Argument(help=f"Architecture: {', '.join(ARCHS)}.")],
    data: Annotated[Path, typer.Option(help="Prepared data folder.")] = Path("data/prepared"),
    out: Annotated[Path | None, typer.Option(help="Result folder.", show_default="tuning/ARCH")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (overrides tune.storage), e.g. postgresql://…")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes training a batch's trials (compute.workers).")
    ] = None,
    n_trials: Annotated[int | None, typer.Option(help="Trials in the study (tune.n_trials).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds before no new trial starts.")] = None,
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Tune dropout, L2 and gradient clipping of ARCH with Optuna (pruned); resumes an interrupted study."""
    _hold(f"sounding tune {arch}")
    _check_arch(arch)
    out = out or Path("tuning") / arch
    check_writable(out)
    options = {"storage": storage, "n_trials": n_trials, "timeout": timeout}
    extra = [f"tune.{k}={v}" for k, v in options.items() if v is not None]
    extra += [f"compute.workers={workers}"] if workers is not None else []
    params = _params(params_path, (overrides or []) + extra)
    _check_prepared(data)
    from sounding.tuning import tune as run_tuning

    s = run_tuning(params, arch, data, out, progress=not quiet)
    if not s["enabled"]:
        typer.echo(f"{arch}: tuning disabled (tune.enabled: false); train uses params as they are")
        return
    c = s["counts"]
    best = ", ".join(f"{k}={v:.3g}" for k, v in s["params"].items())
    typer.echo(
        f"{arch}: best val/acc {s['value']:.4f} (trial {s['trial']}: {best}); baseline "
        f"{s['baseline_state'] if s['baseline_value'] is None else round(s['baseline_value'], 4)}; "
        f"{c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed; "
        + (
            f"each judged by {s['folds']}-fold cross-validation on {s['val_samples']} samples "
            f"(train.min_val is {params.train.min_val}) in {s['wall_s']:.1f} s"
            if s.get("folds")
            else f"{s['epochs_run']}/{s['epochs_budget']} epochs in {s['wall_s']:.1f} s"
        )
    )
    if "settled" in s:
        typer.echo(
            f"{arch}: stopped after {c['complete'] + c['pruned']} of tune.n_trials={params.tune.n_trials} "
            f"trials, as {s['settled']}"
        )
    n = s["min_gain_samples"]
    needed = f"tune.min_gain={params.tune.min_gain} ({n} sample{'' if n == 1 else 's'})"
    judged = f"{s['val_samples']} " + ("held-out samples" if s.get("folds") else "validation samples")
    if "confirm" in s:
        c = s["confirm"]
        typer.echo(
            f"{arch}: on fresh seeds {', '.join(map(str, c['seeds']))} the best trial's values gain "
            f"{', '.join(f'{g:+d}' for g in c['gain_samples'])} of {judged} over the "
            f"baseline's (mean {c['mean_gain_samples']:+.1f} ± {c['sem_gain_samples']:.1f}; mean less its standard "
            f"error {c['lower_gain_samples']:+.1f}, {needed} needed): "
            + ("train adopts them" if s["adopted"] == "tuned" else "train keeps the params' values")
        )
    elif s["adopted"] == "baseline":
        typer.echo(
            f"{arch}: the best trial gains {s['gain_samples']} of {judged} over "
            f"the baseline, fewer than {needed}: train keeps the params' values"
        )


@app.command()
def depth(
    data: Annotated[Path, typer.Option(help="Prepared data folder.")] = Path("data/prepared"),
    metrics: Annotated[Path, typer.Option(help=HEADLINE)] = Path("metrics/depth.json"),
    results: Annotated[Path, typer.Option(help=RESULTS)] = Path("results/depth.json"),
    plots: Annotated[Path, typer.Option(help="Plots folder.")] = Path("plots/depth"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Depth study: MLPs over depth × residual × init × clipping; gradient heatmaps and accuracy vs depth."""
    _hold("sounding depth")
    check_writable(metrics, results, plots)
    params = _params(params_path, overrides)
    _check_prepared(data)
    from sounding import headline
    from sounding.depth import run_depth_study
    from sounding.tracking import held_until_published

    with (
        held_until_published(params.tracking.uri),
        published_together(metrics, results, plots) as (metrics_out, results_out, plots_out),
    ):
        summary = run_depth_study(params, data, results_out, plots_out, progress=not quiet)
        write_json(metrics_out, headline.depth(summary))
    typer.echo(
        f"depth study: {len(summary['configs'])} configurations, {summary['n_diverged']} diverged; "
        f"see {plots}/accuracy_vs_depth.png"
    )


@app.command()
def gan(
    data: Annotated[Path, typer.Option(help="Prepared data folder.")] = Path("data/prepared"),
    judge: Annotated[
        Path | None,
        typer.Option(help="Trained classifier folder used as the judge.", show_default="models/GAN.JUDGE"),
    ] = None,
    model_dir: Annotated[Path, typer.Option(help="Generator output folder.")] = Path("models/gan"),
    metrics: Annotated[Path, typer.Option(help=HEADLINE)] = Path("metrics/gan.json"),
    results: Annotated[Path, typer.Option(help=RESULTS)] = Path("results/gan.json"),
    plots: Annotated[Path, typer.Option(help="Plots folder.")] = Path("plots/gan"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train the class-conditional GAN and measure its samples with a trained classifier as judge."""
    _hold("sounding gan")
    check_writable(model_dir, metrics, results, plots)
    params = _params(params_path, overrides)
    _check_prepared(data)
    judge = judge or Path("models") / params.gan.judge
    for name in ("model.safetensors", "config.json"):
        _check_exists(
            judge / name,
            f"the judge is a trained classifier: run `sounding train {params.gan.judge}` first (gan.judge), "
            "or pass --judge a folder that `sounding train` wrote",
        )
    from sounding import headline
    from sounding.generative import train_gan
    from sounding.tracking import held_until_published

    with (
        held_until_published(params.tracking.uri),
        published_together(model_dir, metrics, results, plots) as (
            model_out,
            metrics_out,
            results_out,
            plots_out,
        ),
    ):
        s = train_gan(params, data, judge, model_out, results_out, plots_out, progress=not quiet)
        write_json(metrics_out, headline.gan(s))
    if "skipped" in s:
        typer.echo(f"gan: skipped: {s['skipped']}")
        return
    r = s["references"]
    typer.echo(
        f"gan: judge accuracy {s['judge_acc']:.3f} (real {r['real']['judge_acc']:.3f}, naive "
        f"{r['naive']['judge_acc']:.3f}); Fréchet {s['frechet']:.2f} (epoch 0 {s['epoch0_frechet']:.2f}, "
        f"real {r['real']['frechet']:.2f}, naive {r['naive']['frechet']:.2f})"
    )


@app.command()
def pretrain(
    data: Annotated[Path, typer.Option(help="Folder for the generated source data.")] = Path("data/pretrain"),
    model_dir: Annotated[Path, typer.Option(help="Pretrained models, one folder per architecture.")] = Path(
        "models/pretrained"
    ),
    results: Annotated[Path, typer.Option(help="Folder of ARCH.json source-test results.")] = Path(
        "results/pretrain"
    ),
    plots: Annotated[Path, typer.Option(help="Plots folder.")] = Path("plots/pretrain"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train each of transfer.archs on the source data (transfer.source_data): the pretrained backbones."""
    _hold("sounding pretrain")
    check_writable(data, model_dir, results, plots)
    params = _params(params_path, overrides)
    from sounding.tracking import held_until_published
    from sounding.transfer import pretrain as run_pretrain

    # The source data is written in place: the runs record its folder as their dataset's source.
    with held_until_published(params.tracking.uri), published_together(model_dir, results, plots) as staged:
        pretrained = run_pretrain(params, data, *staged, progress=not quiet)
    for arch, m in pretrained.items():
        typer.echo(
            f"pretrained {arch}: source test accuracy {m['test_acc']:.4f}, model in {model_dir / arch}"
        )


@app.command()
def transfer(
    data: Annotated[Path, typer.Option(help="Prepared target data folder.")] = Path("data/prepared"),
    pretrained: Annotated[
        Path, typer.Option(help="Models of `sounding pretrain` (transfer.source: pretrain).")
    ] = Path("models/pretrained"),
    metrics: Annotated[Path, typer.Option(help=HEADLINE_FOLDER)] = Path("metrics/transfer"),
    results: Annotated[Path, typer.Option(help=RESULTS)] = Path("results/transfer.json"),
    plots: Annotated[Path, typer.Option(help="Plots folder.")] = Path("plots/transfer"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Scratch vs linear probe vs fine-tuning of a pretrained backbone, at each label budget, over seeds."""
    _hold("sounding transfer")
    check_writable(metrics, results, plots)
    params = _params(params_path, overrides)
    _check_prepared(data)
    for arch in params.transfer.archs:  # a missing weights file, before torch is imported
        params.transfer.source_for(arch, pretrained)
    from sounding import headline
    from sounding.tracking import held_until_published
    from sounding.transfer import run_transfer

    with (
        held_until_published(params.tracking.uri),
        published_together(metrics, results, plots) as (metrics_out, results_out, plots_out),
    ):
        s = run_transfer(params, data, pretrained, results_out, plots_out, progress=not quiet)
        write_json_folder(metrics_out, headline.transfer(s))
    for arch, why in s["skipped"].items():
        typer.echo(f"transfer {arch}: skipped, the pretrained network does not fit this data: {why}")
    if not s["results"]:
        return
    smallest = f"{s['budgets'][0]:g}"
    for arch, by_strategy in s["results"].items():
        gains = ", ".join(
            f"{name} {by_strategy[name][smallest]['gain']:+.3f}" for name in ("linear_probe", "finetune")
        )
        typer.echo(f"{arch}: gain over scratch at budget {smallest}: {gains}")
    typer.echo(f"transfer: {s['wall_time_s']:.0f} s; see {plots}/accuracy_vs_budget.png and {results}")


@app.command()
def register(
    results: Annotated[Path, typer.Option(help="Folder of the training stages' results/ARCH.json.")] = Path(
        "results"
    ),
    data: Annotated[Path, typer.Option(help="Prepared data folder (its test set judges).")] = Path(
        "data/prepared"
    ),
    out: Annotated[Path, typer.Option(help="Decision record.")] = Path("reports/promotion.json"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Register every trained model; promote to @champion only past the gate, else @challenger."""
    _hold("sounding register")
    check_writable(out)
    params = _params(params_path, overrides)
    _check_prepared(data)
    from sounding.registry import register_all

    report = register_all(params, results, data, out)
    for d in report["decisions"]:
        against = (
            f" vs v{d['champion_version']} ({d['champion_accuracy']:.4f}, p={d['mcnemar_p']:.3g})"
            if (d["champion_version"] is not None)
            else " (already registered: same run, same weights)"
            if d["decision"] == "unchanged"
            else " (no champion yet)"
        )
        typer.echo(f"{d['model']} v{d['version']}: accuracy {d['accuracy']:.4f}{against} -> {d['decision']}")


@app.command()
def rollback(
    arch: Annotated[str, typer.Argument(help="Architecture, or 'best'.")],
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Move @champion of PREFIX-ARCH back to the previous champion, and record it."""
    _check_arch(arch, (*ARCHS, "best"))
    params = _params(params_path, overrides)
    from sounding.registry import rollback as roll_back

    result = roll_back(params, f"{params.registry.prefix}-{arch}")
    typer.echo(f"{result['model']}: @champion v{result['replaced']} -> v{result['champion']}")


@app.command()
def predict(
    model: Annotated[str, typer.Option(help="Model URI, e.g. models:/sounding-cnn@champion.")],
    input_path: Annotated[Path, typer.Option("--input", help=".npz file holding x.")],
    output: Annotated[Path, typer.Option(help="CSV of predicted class and probabilities.")],
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Batch inference with a registered or logged model; the input is checked against its signature."""
    params = _params(params_path, overrides)
    from sounding.serving import predict_file

    rows = predict_file(model, params.tracking.uri, input_path, output)
    typer.echo(f"{rows} predictions written to {output}")


@app.command()
def report(
    results: Annotated[Path, typer.Option(help="Folder of the stages' results JSON files.")] = Path(
        "results"
    ),
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("reports"),
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Write the leaderboard (markdown + PNG) comparing every trained architecture."""
    _hold("sounding report")
    check_writable(out)
    params = _params(params_path, overrides, tracked=False)
    from sounding.report import write_report

    path = write_report(results, params.train.archs, params.data.source, out)
    typer.echo(path.read_text())


@app.command("params")
def show_params(
    markdown: Annotated[
        bool, typer.Option("--markdown", help="The parameters reference (docs/params.md) instead.")
    ] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Print the params a command would run with (params.yaml, the environment's MLflow variables and -S
    overrides applied, validated), as YAML; with --markdown, the reference of every key."""
    if markdown:
        from sounding.params_doc import markdown as reference

        typer.echo(reference(), nl=False)
        return
    import yaml

    params = _params(params_path, overrides, tracked=False)
    typer.echo(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False), nl=False)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def repro(ctx: typer.Context) -> None:
    """`dvc repro [ARGS]` (what `make run` runs), refused at once with exit code 2 while another DVC
    command runs in this workspace."""
    from sounding.repro import repro as run_repro

    run_repro(ctx.args)


runs_app = typer.Typer(help="MLflow runs of the project's tracking store.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


@runs_app.command("cleanup")
def runs_cleanup(
    older_than: Annotated[
        str, typer.Option(help="Idle time after which a RUNNING run is stale: 90s, 30m, 2h, 1d, 1h30m.")
    ],
    dry_run: Annotated[bool, typer.Option(help="Only list the stale runs; change nothing.")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
    overrides: SetOpt = None,
) -> None:
    """Close RUNNING runs left by killed processes (kill -9, lost nodes) as KILLED: those whose last activity
    (start, latest metric, or a child run's) is older than --older-than, in every experiment."""
    from sounding.runs import close_stale, parse_duration

    seconds = parse_duration(older_than)
    params = _params(params_path, overrides)
    stale, checked = close_stale(params.tracking.uri, seconds, dry_run)
    verb = "would mark" if dry_run else "marked"
    for run in stale:
        typer.echo(f"{verb} KILLED: {run}")
    typer.echo(
        f"{len(stale)} of {checked} RUNNING run(s) idle for more than {older_than}"
        + (" (dry run: nothing changed)" if dry_run else f"; {len(stale)} marked KILLED")
    )


RETRAIN_FLOW = Path(__file__).resolve().parents[2] / "pipelines" / "retrain.py"
"""The Prefect flow, beside the package in the source checkout (Prefect deployments name it by file)."""
ArchsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--arch", help="Retrain only these architectures: stages train@ARCH and those they depend on."
    ),
]


EPHEMERAL_STARTUP_S = 120
"""Seconds ``sounding retrain`` gives Prefect's ephemeral server to start (Prefect's default: 20)."""


def _retrain_module(params_path: Path, archs: list[str] | None):
    """``pipelines/retrain.py``, once its ``load`` has checked the params (bad input fails before Prefect
    starts anything)."""
    if not RETRAIN_FLOW.is_file():
        raise BadInput(f"{RETRAIN_FLOW} not found: the Prefect flow runs from a source checkout of Sounding")
    # Prefect's ephemeral API server must answer within 20 s by default (read when Prefect is imported):
    # on a machine whose cores were busy with two other runs it took longer, and the flow died with a
    # traceback before any stage ran. A setting of the user's own is kept.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_S))
    from prefect.utilities.importtools import load_script_as_module

    module = load_script_as_module(str(RETRAIN_FLOW))
    module.load(params_path, archs)
    return module


@app.command()
def retrain(
    archs: ArchsOpt = None,
    force: Annotated[bool, typer.Option(help="Run every stage, even those DVC finds up to date.")] = False,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Run the Prefect retraining flow once: the stages of dvc.yaml that DVC finds stale run, and dvc.lock
    records them (docs/scheduling.md)."""
    module = _retrain_module(params_path, archs)
    try:
        states = module.retrain(str(params_path), archs, force)
    except module.StageFailed as exc:  # the stage's exit code: 2 bad input, 69 a service still unavailable
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.returncode if exc.returncode > 0 else 1) from None
    except TimeoutError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo("\n".join(f"{name}: {state}" for name, state in states.items()))


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="When to retrain (cron, UTC).")] = "0 3 * * *",
    name: Annotated[str, typer.Option(help="Deployment name.")] = "scheduled",
    archs: ArchsOpt = None,
    params_path: ParamsOpt = Path("params.yaml"),
) -> None:
    """Serve the retraining flow on a cron schedule against a Prefect server (PREFECT_API_URL), one run
    at a time: a run triggered while another runs waits for it. Stop with Ctrl-C."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.settings import get_current_settings
    from pydantic import ValidationError

    flow = _retrain_module(params_path, archs).retrain
    try:
        CronSchedule(cron=cron)
    except ValidationError as exc:
        raise BadInput(
            f"--cron {cron!r} is not a cron expression: "
            f"{exc.errors()[0]['msg'].removeprefix('Value error, ')}"
        ) from None
    url = get_current_settings().api.url
    if not url:
        raise BadInput(
            "PREFECT_API_URL is not set: Prefect's temporary (ephemeral) server cannot run schedules. "
            "Start one with `prefect server start --host 127.0.0.1` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api, or run `make scheduler`."
        )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if (problem := client.api_healthcheck()) is not None:
            raise BadInput(f"no Prefect server answers at PREFECT_API_URL={url} ({problem})")
    flow.serve(
        name=name,
        cron=cron,
        parameters={"params_path": str(params_path.resolve()), "archs": archs},
        # ENQUEUE, not CANCEL_NEW: a run triggered during another one still sees the changes made meanwhile,
        # and costs little when there are none (DVC finds every stage up to date).
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        limit=1,
    )


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM (scheduler, kill) ends like Ctrl-C, so open MLflow runs are closed as KILLED.
    raise KeyboardInterrupt(f"signal {signum}")


EXIT_NO_SPACE = 74
"""sysexits' EX_IOERR: a disk (or quota) filled up. Neither bad input (2) nor a service to retry (69):
someone must free space first."""


def main() -> None:
    """Console entry point: run the app, turning bad input into exit code 2, a service that does not
    answer into 69 and a full disk into 74."""
    defer_full_collections()  # before the heavy imports: sounding.startup
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()  # click's standalone mode: usage errors exit 2, Ctrl-C exits 1 ("Aborted!")
    except BadInput as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ServiceUnavailable as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(ServiceUnavailable.EXIT_CODE)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        typer.echo(
            f"error: no space left on the device writing {exc.filename or 'an output'}: free space, then "
            "rerun the same command (it resumes from its checkpoints; outputs published together are as "
            "the last complete run left them)",
            err=True,
        )
        sys.exit(EXIT_NO_SPACE)
    except Exception as exc:
        from sounding import tracking

        if not tracking.unreachable(exc):
            raise
        # A request of this process to a server that stopped answering (after MLflow's bounded retries)
        found = re.search(r"API request to (\S+?)/api/", str(exc))
        uri = found.group(1) if found else "(the tracking server)"
        typer.echo(f"error: {tracking.lost_store(uri, tracking.lost_reason(exc))}", err=True)
        sys.exit(ServiceUnavailable.EXIT_CODE)


if __name__ == "__main__":
    main()
