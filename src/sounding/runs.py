"""Stale MLflow runs: a process killed with ``kill -9`` (or by the out-of-memory killer, or a lost node) never
closes its run, which then shows RUNNING forever. ``close_stale`` finds and closes them.

A run is stale when its *last activity* is older than the given age. Last activity is the latest of its
start time, the timestamp of any metric it logged, and the same for its child runs (a tuning study's or the
transfer study's parent run logs little itself while its trials run). Training flushes metrics every few
seconds, so a live training run never looks older than a few seconds; an age of a few hours is safe for
every stage. A stale run is closed as KILLED, with its end time set to its last activity, and tagged
``sounding.closed_by``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sounding.errors import BadInput

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1d"``, ``"1h30m"`` → seconds; ``BadInput`` for anything else."""
    parts = DURATION.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip() or not sum(map(_seconds, parts)):
        raise BadInput(
            f"--older-than {text!r} is not a duration; expected a positive number and a unit, e.g. "
            "90s, 30m, 2h, 1d or 1h30m (units: s, m, h, d)"
        )
    return sum(map(_seconds, parts))


def _seconds(part: tuple[str, str]) -> float:
    return float(part[0]) * UNITS[part[1]]


@dataclass(frozen=True)
class StaleRun:
    run_id: str
    experiment: str
    name: str
    last_activity_ms: int
    idle_s: float

    def __str__(self) -> str:
        return f"{self.run_id} {self.experiment}/{self.name} (idle {self.idle_s / 3600:.1f} h)"


def _last_activity_ms(client: Any, run: Any) -> int:
    """The latest of the run's start time and the timestamps of every metric value it logged."""
    stamps = [run.info.start_time or 0]
    stamps += [
        m.timestamp for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)
    ]
    return max(stamps)


def find_stale(client: Any, older_than_s: float, now_ms: int | None = None) -> tuple[list[StaleRun], int]:
    """RUNNING runs of every active experiment of the store whose last activity (module docstring) is more
    than ``older_than_s`` seconds before ``now_ms`` (default: now), and how many runs are RUNNING in all."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return [], 0
    ids = list(experiments)
    running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=50_000)
    stale = []
    for run in running:
        children = client.search_runs(
            ids, f"tags.mlflow.parentRunId = '{run.info.run_id}'", max_results=50_000
        )
        activity = max(
            [_last_activity_ms(client, run)]
            + [max(_last_activity_ms(client, c), c.info.end_time or 0) for c in children]
        )
        idle_s = (now_ms - activity) / 1000
        if idle_s > older_than_s:
            name = run.info.run_name or run.info.run_id
            stale.append(
                StaleRun(run.info.run_id, experiments[run.info.experiment_id], name, activity, idle_s)
            )
    return stale, len(running)


def close_stale(uri: str, older_than_s: float, dry_run: bool = False) -> tuple[list[StaleRun], int]:
    """Close the stale runs of the store at ``uri`` as KILLED (unless ``dry_run``); return them and the
    number of RUNNING runs checked."""
    from sounding import tracking

    client = tracking.client(uri)
    stale, checked = find_stale(client, older_than_s)
    for run in [] if dry_run else stale:
        client.set_tag(run.run_id, "sounding.closed_by", "sounding runs cleanup (stale RUNNING run)")
        client.set_terminated(run.run_id, "KILLED", end_time=run.last_activity_ms)
    return stale, checked
