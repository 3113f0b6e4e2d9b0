"""The headline numbers each stage's DVC metrics file holds: numbers only, rounded, a handful."""

from __future__ import annotations

import json

from sounding import headline


def test_train_keeps_the_accuracies_rounded_and_nothing_else() -> None:
    record = {"test_acc": 0.93199998, "test_acc_std": 0.0123456789, "test_f1_macro": 0.9, "train_time_s": 12.3,
              "model_uri": "models:/m-1", "data_sha256": "ab", "seeds": [{"run_id": "x"}]}  # fmt: skip
    assert headline.train(record) == {"test_acc": 0.932, "test_acc_std": 0.012346, "test_f1_macro": 0.9}


def test_studies_give_their_headline_or_nothing_when_skipped() -> None:
    assert headline.gan({"skipped": "not [N, L] data"}) == {}
    assert headline.gan({"judge_acc": 0.8, "frechet": 85.0, "references": {}}) == {
        "judge_acc": 0.8,
        "frechet": 85.0,
    }
    configs = [{"test_acc": 0.5, "diverged": False}, {"test_acc": 0.1, "diverged": True}]
    assert headline.depth({"configs": configs, "n_diverged": 1}) == {"test_acc": 0.5}
    assert headline.depth({"configs": configs[1:], "n_diverged": 1}) == {}
    transfer = {
        "budgets": [0.01, 1.0],
        "results": {"mlp": {"finetune": {"0.01": {"gain": 0.4}, "1": {"gain": 0.0}}}},
    }
    assert headline.transfer(transfer) == {"mlp": {"finetune_gain": 0.4}}
    assert headline.transfer({"budgets": [0.01], "results": {}, "skipped": {"mlp": "no fit"}}) == {}
    assert headline.transfer({"results": {}, "skipped": {"mlp": "no fit"}}) == {}  # all skipped: no budgets
    baselines = {
        "baselines": {
            "logreg": {"test_acc": 0.3, "test_f1_macro": 0.25, "run_id": "r"},
            "1nn": {"test_acc": 0.5, "test_f1_macro": 0.5},
        }
    }
    assert headline.baselines(baselines) == {
        "logreg": {"test_acc": 0.3, "test_f1_macro": 0.25},
        "1nn": {"test_acc": 0.5, "test_f1_macro": 0.5},
    }


def test_a_metrics_folder_holds_exactly_the_models_of_its_last_run(tmp_path) -> None:
    from sounding.files import write_json_folder

    folder = tmp_path / "metrics" / "transfer"
    write_json_folder(folder, {"cnn": {"finetune_gain": 0.6}, "mlp": {"finetune_gain": 0.3}})
    (folder / "notes.txt").write_text("kept")
    write_json_folder(folder, {"mlp": {"finetune_gain": 0.2}})
    assert sorted(p.name for p in folder.iterdir()) == ["mlp.json", "notes.txt"]
    assert json.loads((folder / "mlp.json").read_text()) == {"finetune_gain": 0.2}
