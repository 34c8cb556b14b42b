from pathlib import Path


def test_app_conf_has_the_chosen_engine_and_port():
    conf = Path("app.conf")
    assert conf.is_file(), "app.conf was not written"
    lines = [ln.strip() for ln in conf.read_text().splitlines() if ln.strip()]
    assert lines == ["# written by installer.py", "engine = postgres", "port = 5433"]


def test_the_installer_is_unchanged():
    assert "def ask_engine" in Path("installer.py").read_text()
