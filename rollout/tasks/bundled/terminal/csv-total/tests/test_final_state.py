from pathlib import Path


def test_total_is_written_with_two_decimals():
    assert Path("report/total.txt").read_text() == "167.75\n"


def test_input_is_unchanged():
    lines = Path("data/sales.csv").read_text().splitlines()
    assert lines[0] == "id,region,amount" and len(lines) == 6
