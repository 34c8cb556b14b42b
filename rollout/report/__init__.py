"""The HTML run report: `<run_dir>/report.html`, rebuilt from the run dir alone.

`build_report(run_dir)` is what the driver calls during the run (every
`metrics.report_interval` seconds, in a thread) and at its end; `python -m rollout.report
runs/<id>` does the same by hand. The file is replaced atomically, so a browser never sees
half of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from rollout.report.data import collect
from rollout.report.page import render

REPORT_FILE = "report.html"


def build_report(run_dir: Path | str) -> Path:
    run_dir = Path(run_dir)
    out = run_dir / REPORT_FILE
    tmp = run_dir / f".{REPORT_FILE}.{os.getpid()}.tmp"
    tmp.write_text(render(collect(run_dir)), encoding="utf-8")
    os.replace(tmp, out)
    return out
