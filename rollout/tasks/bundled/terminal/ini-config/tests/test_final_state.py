import configparser


def _config():
    c = configparser.ConfigParser()
    assert c.read("config/app.ini") == ["config/app.ini"]
    return c


def test_server_port_changed_and_host_kept():
    c = _config()
    assert c["server"]["port"] == "8080" and c["server"]["host"] == "0.0.0.0"


def test_cache_section_added():
    c = _config()
    assert c["cache"]["enabled"] == "true" and c["cache"]["ttl"] == "300"


def test_logging_unchanged():
    c = _config()
    assert dict(c["logging"]) == {"level": "info", "file": "/tmp/app.log"}
