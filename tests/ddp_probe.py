"""Run under ``torchrun --nproc_per_node=2`` (tests/test_cluster.py): one DDP fit of the MLP on the CPU
(gloo) in the current folder, then one JSON file per rank (``probe-RANK.json``; the ranks share one stdout, where
their lines can interleave): its global step and the batches it trained on."""

from __future__ import annotations

import json
import os
import sys

import lightning as L

from sounding.config import load_params
from sounding.data.prepare import load_prepared
from sounding.training import fit


class Steps(L.Callback):
    def __init__(self) -> None:
        self.batches, self.global_step = 0, -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.global_step = trainer.global_step


def main() -> None:
    params = load_params("params.yaml")
    steps = Steps()
    fit(params, "mlp", params.seed, load_prepared("data/prepared"), "run", callbacks=[steps], progress=False)
    rank = int(os.environ["RANK"])  # torchrun's
    report = {"rank": rank, "global_step": steps.global_step, "batches": steps.batches}
    with open(f"probe-{rank}.json", "w") as fh:
        json.dump(report, fh)


if __name__ == "__main__":
    sys.exit(main())
