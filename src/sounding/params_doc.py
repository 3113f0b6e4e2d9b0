"""The parameters reference, ``docs/params.md``, generated from the models of ``config.py``: every key, its
default and its description (the field's docstring), so a parameter is described in one place.

``sounding params --markdown > docs/params.md``; ``tests/test_config.py`` fails when the page differs.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from sounding.config import Params, Section

INTRO = """# Parameters (`params.yaml`)

Generated from `src/sounding/config.py` by `sounding params --markdown > docs/params.md`; a test fails when
this page and the code differ. `params.yaml` holds these defaults. Every key is validated
(`sounding.config.Params`: pydantic, frozen, unknown keys rejected with a suggestion); a bad value exits
with code 2, naming the key, the value and what is allowed, before any work. Change a key for one command
with `-S key.path=value` (`sounding train cnn -S train.lr=0.003`), or for a DVC experiment with
`dvc exp run -S key.path=value`.
"""

OUTRO = """
## The MNIST-1D defaults and the published setting

The published reference accuracies (Greydanus & Kobak, MNIST-1D): logistic 32%, MLP 68%, CNN 94%, GRU 91%.
The defaults differ from the published setting in two ways: 10% of the 4000 training samples are held out
for validation (the reference trains on all 4000 and has no validation set), and a small L2
(`train.weight_decay: 5e-4`) is on, because without it the MLP and CNN overfit within a few dozen epochs
on 3600 samples.
"""


def _text(description: str | None) -> str:
    """A docstring as one markdown table cell."""
    return " ".join((description or "").split()).replace("``", "`").replace("|", "\\|")


def _shown(value: Any) -> str:
    """A default as YAML in a code span."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
    elif isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return f"`{text.removesuffix('...').strip()}`".replace("|", "\\|")


def _rows(instance: Section, prefix: str, seen: set[type]) -> list[str]:
    """Table rows for the fields of ``instance``, nested sections flattened (``models.cnn.channels``); a
    section seen before (``transfer.source_data`` has ``data``'s keys) is one row of what differs."""
    rows = []
    for name, field in type(instance).model_fields.items():
        key, value = f"{prefix}{name}", getattr(instance, name)
        section = field.annotation if isinstance(field.annotation, type) else None
        if section is not None and issubclass(section, Section) and section not in seen:
            seen.add(section)
            rows += _rows(value, f"{key}.", seen)
        else:
            rows.append(f"| `{key}` | {_shown(value)} | {_text(field.description)} |")
    return rows


def markdown(params: Params | None = None) -> str:
    """The reference page for ``params`` (default: the defaults)."""
    params = params or Params()
    seen: set[type] = {Params}
    lines = [INTRO, "| key | default | meaning |", "|---|---|---|"]
    sections = []
    for name, field in Params.model_fields.items():
        value = getattr(params, name)
        if isinstance(value, Section):
            sections.append((name, value))
        else:
            lines.append(f"| `{name}` | {_shown(value)} | {_text(field.description)} |")
    for name, value in sections:
        seen.add(type(value))
        lines += ["", f"## `{name}`", "", _text(type(value).__doc__), ""]
        lines += [
            "| key | default | meaning |",
            "|---|---|---|",
            *_rows(value, f"{name}.", seen),
        ]
    return "\n".join(lines) + "\n" + OUTRO
