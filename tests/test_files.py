"""Outputs published together: all from the new run, or all as they were."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sounding import files

pytestmark = pytest.mark.fresh_store  # the tests compare every file of their folder


def _state(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _old_outputs(root: Path) -> tuple[Path, Path, Path]:
    model, metrics, stale = root / "models/cnn", root / "metrics/cnn.json", root / "plots/cnn"
    for path, text in ((model / "w", "old w"), (metrics, "old m"), (stale / "p.csv", "old p")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return model, metrics, stale


def test_outputs_are_replaced_together_and_one_not_written_is_removed(tmp_path: Path) -> None:
    model, metrics, stale = _old_outputs(tmp_path)
    (tmp_path / "plots/.cnn.partial").mkdir()  # left by a killed run: removed, not published
    (tmp_path / "plots/.cnn.partial/junk").write_text("killed")
    with files.published_together(model, metrics, stale) as (m, me, _):
        m.mkdir()
        (m / "w").write_text("new w")
        files.write_json(me, {"acc": 1})
    assert _state(tmp_path) == {"models/cnn/w": "new w", "metrics/cnn.json": '{\n  "acc": 1\n}\n'}


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_block_that_raises_leaves_every_output_as_it_was(tmp_path: Path, error: BaseException) -> None:
    outputs = _old_outputs(tmp_path)
    before = _state(tmp_path)
    with pytest.raises(type(error)), files.published_together(*outputs) as (m, me, _):
        m.mkdir()
        (m / "w").write_text("new w")
        raise error
    assert _state(tmp_path) == before


def test_a_rename_failing_mid_swap_puts_the_old_outputs_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, metrics, stale = _old_outputs(tmp_path)
    before = _state(tmp_path)
    rename = os.rename

    def fail_on_the_metrics(src: Path, dst: Path) -> None:
        if Path(src).name == ".cnn.json.partial":
            raise OSError(5, "Input/output error")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", fail_on_the_metrics)
    with pytest.raises(OSError, match="Input/output"), files.published_together(model, metrics, stale) as st:
        for path in st:
            files.write_text(path if path.suffix else path / "f", "new")
    assert _state(tmp_path) == before  # the model, swapped first, is the old one again


def test_disabled_yields_the_outputs_themselves_and_publishes_nothing(tmp_path: Path) -> None:
    outputs = _old_outputs(tmp_path)
    before = _state(tmp_path)
    with files.published_together(*outputs, enabled=False) as staged:
        assert staged == outputs
    assert _state(tmp_path) == before
