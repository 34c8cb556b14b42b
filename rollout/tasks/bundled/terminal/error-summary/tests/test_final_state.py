import json
from pathlib import Path


def test_counts_per_level():
    assert json.loads(Path("summary.json").read_text()) == {"INFO": 4, "WARN": 2, "ERROR": 3}
