from pathlib import Path

EXPECTED = {
    "archive/2024-01/app-2024-01-03.log": "log of 2024-01-03\n",
    "archive/2024-01/app-2024-01-17.log": "log of 2024-01-17\n",
    "archive/2024-02/app-2024-02-01.log": "log of 2024-02-01\n",
    "archive/2024-03/app-2024-03-30.log": "log of 2024-03-30\n",
}


def test_logs_are_archived_by_month():
    for path, content in EXPECTED.items():
        assert Path(path).read_text() == content, path


def test_incoming_keeps_only_other_files():
    assert sorted(p.name for p in Path("incoming").iterdir()) == ["README.txt"]
