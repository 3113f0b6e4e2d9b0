"""GPU check: train the CNN, the GRU and the FCN with bf16-mixed on one GPU through ``sounding.training.fit``, and
compare with the CPU in 32-bit (the pipeline's default); then check that ``16-mixed`` with gradient
clipping clips the true gradients.

The clipping check trains each architecture for one epoch on the GPU in ``32`` and in ``16-mixed`` with
``train.gradient_clip_val`` 0.5, and compares the per-layer gradient norms ``LitClassifier`` logs (taken
where Lightning clips: after the loss scaler has unscaled the gradients). Unscaled, the two runs agree
within a few percent; norms of scaled gradients would be about 65,536 times larger (the scaler's initial
scale). It fails (exit 1) when any layer's ratio is outside 0.8–1.25.

For each architecture and batch size it prints training samples/s on the GPU and on the CPU, and the
achieved TFLOP/s against the GPU's peak dense bf16 figure. Throughput is the steady state: epochs after
the first (CUDA context, cuDNN autotuning), from the per-epoch training time that ``fit`` records (training
steps plus the validation pass and the checkpoint of each epoch, as in the pipeline). FLOPs are counted
with ``torch.utils.flop_counter`` on one forward and backward pass of a batch, on the CPU copy of the
network: cuDNN's fused RNN kernel is opaque to the counter, the arithmetic is the same. Validation FLOPs
are not counted, so the achieved figure is a lower bound.

These networks have 5,000 to 17,000 parameters on MNIST-1D: a GPU is launch-bound on them and reaches a
tiny fraction of its peak. The check shows that the GPU path works and what it buys, not that it is efficient.

    benchmarks/gpu_check.sh [--epochs 20] [--cpu-epochs 3] [--batch-sizes 100,1000] [--archs cnn,rnn,fcn]
    GPU_PEAK_TFLOPS=989 benchmarks/gpu_check.sh      # a GPU missing from the table below
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.common import machine, prepared_default_data
from benchmarks.flops import step_flops
from sounding.config import Params
from sounding.files import write_json
from sounding.training import fit

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

PEAK_BF16_DENSE_TFLOPS = {
    # Vendor spec sheets, dense (no 2:4 sparsity) bf16 tensor-core throughput. Most specific first.
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
}


def peak_tflops(name: str) -> tuple[float | None, str]:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]), "GPU_PEAK_TFLOPS"
    for key, value in PEAK_BF16_DENSE_TFLOPS.items():
        if key in name:
            return value, f"spec sheet ({key}, dense bf16)"
    return None, "unknown: set GPU_PEAK_TFLOPS"


def steady_samples_per_s(history: list[dict], n_train: int) -> float:
    """Training samples per second over the epochs after the first (all of them if there is one)."""
    if len(history) < 2:
        return n_train * len(history) / history[-1]["time_s"]
    return n_train * (len(history) - 1) / (history[-1]["time_s"] - history[0]["time_s"])


def run(params: Params, arch: str, data, workdir: Path) -> dict:
    result = fit(params, arch, params.seed, data, workdir, progress=False)
    return {
        "samples_per_s": steady_samples_per_s(result.history, len(data.train.y)),
        "test_acc": result.metrics["test/acc"],
        "device": result.device,
        "epochs": len(result.history),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="GPU epochs per fit")
    parser.add_argument("--cpu-epochs", type=int, default=3, help="CPU epochs per fit (the baseline)")
    parser.add_argument("--batch-sizes", default="100,1000", help="100 is the pipeline's")
    parser.add_argument("--archs", default="cnn,rnn,fcn")
    parser.add_argument("--accelerator", default="gpu", help=argparse.SUPPRESS)  # cpu: test this script
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gpu_check.json"))
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is visible to torch here; nothing to check.", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(0) if args.accelerator == "gpu" else "CPU (script test)"
    peak, peak_source = peak_tflops(name) if args.accelerator == "gpu" else (None, "n/a")
    print(f"device: {name}; peak {peak or '?'} TFLOP/s bf16 ({peak_source})")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}; host: {machine()}")

    base = Params().with_overrides({"train.n_seeds": 1, "compute.devices": 1})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = prepared_default_data(Path(tmp))
        print(f"data: MNIST-1D, {len(data.train.y)} training samples\n")
        header = (
            f"{'arch':5} {'batch':>5} {'GPU bf16 samples/s':>19} {'CPU fp32 samples/s':>19} {'GPU/CPU':>8} "
            f"{'MFLOP/sample':>12} {'TFLOP/s':>8} {'% of peak':>9} {'test acc GPU/CPU':>17}"
        )
        print(header)
        for arch in args.archs.split(","):
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                common = {"train.batch_size": batch}
                gpu_params = base.with_overrides(
                    {
                        **common,
                        "train.epochs": args.epochs,
                        "compute.accelerator": args.accelerator,
                        "compute.precision": "bf16-mixed",
                    }
                )
                cpu_params = base.with_overrides(
                    {**common, "train.epochs": args.cpu_epochs, "compute.accelerator": "cpu"}
                )
                gpu = run(gpu_params, arch, data, Path(tmp) / f"{arch}-{batch}-gpu")
                cpu = run(cpu_params, arch, data, Path(tmp) / f"{arch}-{batch}-cpu")
                flops = step_flops(cpu_params, arch, data) / batch  # per sample, counted on the CPU
                tflops = flops * gpu["samples_per_s"] / 1e12
                share = 100 * tflops / peak if peak else None
                rows.append(
                    {
                        "arch": arch,
                        "batch_size": batch,
                        "gpu": gpu,
                        "cpu": cpu,
                        "speedup": gpu["samples_per_s"] / cpu["samples_per_s"],
                        "train_flops_per_sample": flops,
                        "achieved_tflops": tflops,
                        "percent_of_peak": share,
                    }
                )
                print(
                    f"{arch:5} {batch:>5} {gpu['samples_per_s']:>19,.0f} {cpu['samples_per_s']:>19,.0f} "
                    f"{rows[-1]['speedup']:>7.1f}x {flops / 1e6:>12.3f} {tflops:>8.4f} "
                    f"{(f'{share:.4f}%' if share is not None else '?'):>9} "
                    f"{gpu['test_acc']:>8.3f}/{cpu['test_acc']:.3f}"
                )
        clipping = amp_clip_check(base, args.archs.split(","), args.accelerator, data, Path(tmp))
    write_json(
        args.out,
        {"device": name, "peak_tflops": peak, "peak_source": peak_source, "rows": rows, "amp_clip": clipping},
    )
    print(f"\nGPU epochs {args.epochs}, CPU epochs {args.cpu_epochs} (1 torch thread); written to {args.out}")
    return 0 if all(row["passed"] for row in clipping) else 1


def amp_clip_check(base: Params, archs: list[str], accelerator: str, data, workdir: Path) -> list[dict]:
    """Per architecture: epoch-0 gradient norms of ``16-mixed`` over those of ``32``, both clipped at 0.5."""
    # On a CPU Lightning replaces 16-mixed by bf16-mixed (no fp16 autocast there): the script's own test.
    print("\nclipping under 16-mixed (gradient_clip_val 0.5): per-layer gradient norm, 16-mixed ÷ 32")
    rows = []
    for arch in archs:
        norms = {}
        for precision in ("32", "16-mixed"):
            params = base.with_overrides(
                {
                    "train.epochs": 1,
                    "train.gradient_clip_val": 0.5,
                    "compute.accelerator": accelerator,
                    "compute.precision": precision,
                }
            )
            result = fit(
                params, arch, params.seed, data, workdir / f"clip-{arch}-{precision}", progress=False
            )
            norms[precision] = {k: v for k, v in result.history[0].items() if k.startswith("grad_norm/")}
        ratios = {k: norms["16-mixed"][k] / norms["32"][k] for k in norms["32"]}
        passed = all(0.8 <= r <= 1.25 for r in ratios.values())
        rows.append({"arch": arch, "ratios": ratios, "passed": passed})
        shown = ", ".join(f"{k.removeprefix('grad_norm/')} {r:.3f}" for k, r in ratios.items())
        print(f"{arch:5} {'pass' if passed else 'FAILS'}: {shown}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
