"""The UCR/UEA sets that aeon's wheel bundles as ``.ts`` files, copied out for ``sounding example-data``:
real data to try the ``ts`` source on, with no network."""

from __future__ import annotations

import filecmp
import importlib.util
import shutil
from pathlib import Path

from sounding.data.sources import RawData, load_ts
from sounding.errors import BadInput


def bundled_sets() -> dict[str, tuple[Path, Path]]:
    """NAME → (NAME_TRAIN.ts, NAME_TEST.ts) for every set aeon ships with both parts, by name."""
    # find_spec locates the installed package without importing it (aeon's import takes seconds).
    spec = importlib.util.find_spec("aeon")
    if spec is None or spec.origin is None:
        raise BadInput("aeon is not installed; it is a dependency of sounding: pip install 'aeon==1.6.0'")
    sets = {}
    for train in sorted((Path(spec.origin).parent / "datasets" / "data").glob("*/*_TRAIN.ts")):
        name = train.name.removesuffix("_TRAIN.ts")
        test = train.with_name(f"{name}_TEST.ts")
        if test.is_file():
            sets[name] = (train, test)
    return sets


def copy_example(name: str, out: str | Path) -> tuple[Path, Path, RawData]:
    """Copy set ``name`` (any case) into ``out``; return the two copies and the set as ``prepare`` reads it.

    A set that ``prepare`` would refuse (a regression target) is refused here, and nothing is copied; nor
    is anything overwritten: a different file of the same name is an error."""
    sets = bundled_sets()
    found = name if name in sets else next((n for n in sets if n.lower() == name.lower()), None)
    if found is None:
        raise BadInput(f"unknown example set {name!r}; the sets bundled with aeon: {', '.join(sets)}")
    sources = sets[found]
    try:
        raw = load_ts(*sources)
    except BadInput as exc:
        raise BadInput(f"example set {found} cannot be prepared: {exc}") from exc
    out = Path(out)
    copies = tuple(out / source.name for source in sources)
    for source, copy in zip(sources, copies, strict=True):
        if copy.exists() and not (copy.is_file() and filecmp.cmp(source, copy, shallow=False)):
            raise BadInput(
                f"{copy} exists and is not aeon's {source.name}: move it away or choose another --out"
            )
    out.mkdir(parents=True, exist_ok=True)
    for source, copy in zip(sources, copies, strict=True):
        shutil.copyfile(source, copy)
    return copies[0], copies[1], raw
