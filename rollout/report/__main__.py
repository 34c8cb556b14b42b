"""`python -m rollout.report runs/<id>`: rebuild a run's report.html from its run dir."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rollout.record.events import EVENTS_FILE
from rollout.report import build_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout.report",
                                     description="Rebuild a run's report.html from its run dir.")
    parser.add_argument("run_dir", type=Path, help="the run dir, e.g. runs/2026-12-02_07-00-00")
    args = parser.parse_args(argv)
    run_dir: Path = args.run_dir
    if not run_dir.is_dir():
        print(f"error: {run_dir} is not a directory", file=sys.stderr)
        return 2
    if not (run_dir / EVENTS_FILE).exists() and not (run_dir / "queue_state.json").exists():
        print(f"error: {run_dir} is not a run dir (no {EVENTS_FILE}, no queue_state.json)",
              file=sys.stderr)
        return 2
    try:
        out = build_report(run_dir)
    except OSError as e:
        print(f"error: cannot write the report in {run_dir}: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
