"""What the length-agnostic ``fcn`` costs beside the reference ``cnn``: seconds to train one seed at the
default params, on MNIST-1D (4000 series of length 40) and on OSULeaf (200 series of length 427, a UCR set
bundled in aeon's wheel), each pair timed back to back in one run.

    python -m benchmarks.arch_cost [--pairs 1]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Figure, machine, prepared_default_data, timed
from sounding.config import Params
from sounding.data.examples import bundled_sets
from sounding.data.prepare import load_prepared, prepare
from sounding.training import fit


def _osuleaf(work: Path):
    train, test = bundled_sets()["OSULeaf"]
    data = Params().with_overrides(
        {"data.source": "ts", "data.path": str(train), "data.test_path": str(test)}
    )
    prepare(data.data, data.seed, work / "osuleaf")
    return load_prepared(work / "osuleaf")


def measure(pairs: int = 1) -> list[Figure]:
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    params = Params().with_overrides({"compute.accelerator": "cpu"})
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"machine: {machine()}")
        for name, data in (("MNIST-1D", prepared_default_data(work)), ("OSULeaf", _osuleaf(work))):

            def run(arch: str, data=data) -> None:
                shutil.rmtree(work / "run", ignore_errors=True)
                fit(params, arch, params.seed, data, work / "run", progress=False)

            seconds: dict[str, list[float]] = {"cnn": [], "fcn": []}
            for i in range(pairs):
                for arch in ("cnn", "fcn") if i % 2 == 0 else ("fcn", "cnn"):
                    seconds[arch].append(timed(lambda a=arch: run(a)))
            cnn, fcn = statistics.median(seconds["cnn"]), statistics.median(seconds["fcn"])
            detail = f"fcn {fcn:.0f} s, cnn {cnn:.0f} s per seed ({len(data.train.y)} training series), {pairs} pair(s)"
            print(f"{name}: {detail}")
            figures.append(
                Figure(10, f"fcn ÷ cnn training time per seed, {name}", fcn / cnn, "–", None, detail)
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1)
    measure(parser.parse_args().pairs)


if __name__ == "__main__":
    main()
