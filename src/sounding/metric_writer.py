"""The child process of ``tracking.MetricWriter``: reads ``[uri, run_id, rows]`` JSON lines from stdin,
writes each batch to MLflow with ``tracking.log_steps`` and answers with one line on stdout: empty when
written, else the error. It exits when stdin closes, which happens when its parent exits or is killed.
"""

from __future__ import annotations

import json
import signal
import sys

from sounding.tracking import log_steps


def main() -> None:
    # Ctrl-C reaches the whole process group: the parent decides, and this child writes what it was given
    # and exits when the parent closes its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for line in sys.stdin:
        try:
            uri, run_id, rows = json.loads(line)
            log_steps(uri, run_id, [(int(step), metrics) for step, metrics in rows])
            answer = ""
        except Exception as exc:  # reported to the parent, which raises it
            answer = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
