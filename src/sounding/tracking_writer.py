"""The child process of ``tracking.TrackingWriter``: reads ``[op, uri, run_id, payload]`` JSON lines from
stdin and answers each with one line on stdout: empty when written, else the error. Ops:

- ``metrics``: payload ``[[step, {key: value}], ...]``, written with ``tracking.log_steps``;
- ``params``: payload ``{key: value}``, the run's params (logged once, at its start);
- ``tags``: payload ``{key: value}``;
- ``end``: payload the run's final status. A run whose metrics or params failed to write ends FAILED, not
  FINISHED; a ``HELD`` run (``tracking.held_until_published``) that did not fail stays RUNNING.

Lines are handled in order, so a run ends after everything sent for it before. Once a store stops
answering (``tracking.unreachable``: after MLflow's bounded retries), every later item for it is answered
``lost`` at once, unwritten, instead of waiting out the retries of each in turn: the parent then reports
the store lost (exit 69), and the checkpoints, which hold every epoch, let a rerun log what is missing.
The process exits when stdin closes, which happens when its parent exits or is killed: what it was sent
is written first.
"""

from __future__ import annotations

import json
import signal
import sys

from sounding.startup import defer_full_collections
from sounding.tracking import HELD, LOST, client, log_steps, lost_reason, unreachable


def handle(op: str, uri: str, run_id: str, payload, failed: set[str]) -> None:
    from mlflow.entities import Param, RunTag

    if op in ("metrics", "params"):
        try:
            if op == "metrics":
                log_steps(uri, run_id, [(int(step), metrics) for step, metrics in payload])
            else:
                client(uri).log_batch(run_id, params=[Param(k, str(v)) for k, v in payload.items()])
        except Exception:
            failed.add(run_id)
            raise
    elif op == "tags":
        client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in payload.items()])
    elif op == "end":
        status = "FAILED" if payload in ("FINISHED", HELD) and run_id in failed else payload
        if status != HELD:  # a held run ends when its stage's outputs are published
            client(uri).set_terminated(run_id, status)
    else:
        raise ValueError(f"unknown op {op!r}; allowed: metrics, params, tags, end")


def main() -> None:
    defer_full_collections()  # before MLflow's imports: sounding.startup
    # Ctrl-C reaches the whole process group: the parent decides, and this child writes what it was given
    # and exits when the parent closes its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    failed: set[str] = set()
    lost: dict[str, str] = {}  # stores that stopped answering: uri -> reason
    for line in sys.stdin:
        op, uri, run_id, payload = json.loads(line)
        answer = ""
        try:
            if uri not in lost:
                handle(op, uri, run_id, payload, failed)
        except Exception as exc:  # reported to the parent, which raises it
            if unreachable(exc):
                lost[uri] = lost_reason(exc)
            else:
                answer = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if uri in lost:
            answer = LOST + json.dumps([uri, lost[uri]])
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
