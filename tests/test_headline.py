"""The headline numbers each stage's DVC metrics file holds: numbers only, rounded, a handful."""

from __future__ import annotations

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
    assert headline.depth({"configs": configs, "n_diverged": 1}) == {"n_diverged": 1, "best_test_acc": 0.5}
    all_diverged = headline.depth({"configs": configs[1:], "n_diverged": 1})
    assert all_diverged == {"n_diverged": 1}
    transfer = {
        "budgets": [0.01, 1.0],
        "results": {"mlp": {"finetune": {"0.01": {"gain": 0.4}, "1": {"gain": 0.0}}}},
    }
    assert headline.transfer(transfer) == {"finetune_gain": {"mlp": 0.4}}
    assert headline.transfer({"budgets": [0.01], "results": {}, "skipped": {"mlp": "no fit"}}) == {}
    baselines = {"baselines": {"logreg": {"test_acc": 0.3, "run_id": "r"}, "1nn": {"test_acc": 0.5}}}
    assert headline.baselines(baselines) == {"logreg": {"test_acc": 0.3}, "1nn": {"test_acc": 0.5}}
