"""launch's preflight, in-process: each mistake is one PreflightError line that names the key
to change, found before Ray starts (launch turns it into `error: ...`, exit 2, no run dir:
tests/test_first_hour.py runs that path as a user would)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from rollout.settings.preflight import PreflightError
from tests.launch_config import compose_config, qwen_tokenizer_dir

BASE = ["conf=math_repl", "policy=gold", "tasks.max_items=2"]


def preflight_error(*overrides: str) -> str:
    cfg = compose_config([*BASE, *overrides])
    with pytest.raises(PreflightError) as info:
        launch.preflight(cfg)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # bound then closed: nothing listens there


# --- the policy's tokenizer ------------------------------------------------------------------


def test_a_tokenizer_that_does_not_exist_or_holds_no_tokenizer(tmp_path: Path):
    msg = preflight_error(f"policy.tokenizer={tmp_path}/nope")
    assert msg.startswith(f"policy.tokenizer={tmp_path}/nope does not exist"), msg
    msg = preflight_error(f"policy.tokenizer={tmp_path}")
    assert msg.startswith(f"policy.tokenizer={tmp_path} holds no tokenizer files"), msg


def test_a_tokenizer_that_does_not_load(tmp_path: Path):
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    msg = preflight_error(f"policy.tokenizer={tmp_path}")
    assert msg.startswith(f"policy.tokenizer={tmp_path} cannot be loaded for policy.type=gold"), msg
    assert "set it to the model's tokenizer dir" in msg


def test_a_tokenizer_without_a_chat_template(tmp_path: Path):
    for f in Path(qwen_tokenizer_dir()).iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / f.name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config.pop("chat_template", None), "the fixture tokenizer had no template to remove"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in tmp_path.glob("*.jinja"):
        extra.unlink()
    msg = preflight_error(f"policy.tokenizer={tmp_path}")
    assert msg.startswith(f"policy.tokenizer={tmp_path} cannot serve policy.type=gold"), msg
    assert "policy.chat_template" in msg
    # The same tokenizer with a template that drops assistant turns cannot add tool results.
    template = tmp_path / "drops-assistant.jinja"
    template.write_text("{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}"
                        "{% endif %}{% endfor %}")
    msg = preflight_error(f"policy.tokenizer={tmp_path}", f"policy.chat_template={template}")
    assert "cannot render a tool-calling turn" in msg and "policy.chat_template" in msg, msg


def test_a_good_tokenizer_passes():
    assert launch.preflight(compose_config([*BASE, f"policy.tokenizer={qwen_tokenizer_dir()}"]))


# --- the slot server's interpreter -----------------------------------------------------------


def test_a_server_python_without_the_servers_dependencies(tmp_path: Path):
    # A bare virtualenv: Python, but not aiohttp.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")],
                   check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    msg = preflight_error(f"policy.tokenizer={qwen_tokenizer_dir()}", f"backend.python={python}")
    assert msg.startswith(f"backend.python={python} cannot run the slot server "
                          "(ModuleNotFoundError: No module named"), msg
    msg = preflight_error(f"backend.python={tmp_path}/none/python")
    assert msg.startswith(f"backend.python={tmp_path}/none/python does not exist"), msg


# --- a Ray cluster to join -------------------------------------------------------------------


def test_an_unreachable_ray_address(monkeypatch):
    port = closed_port()
    msg = preflight_error(f"ray.address=127.0.0.1:{port}")
    assert msg == (f"the Ray cluster at ray.address=127.0.0.1:{port} is not reachable "
                   "(connection refused: nothing listens there); start it (`ray start --head`) "
                   "or fix ray.address")
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    assert f"RAY_ADDRESS=127.0.0.1:{port} is not reachable" in preflight_error()
    monkeypatch.delenv("RAY_ADDRESS")
    assert "ray.address=head is not an address of a Ray head" in preflight_error("ray.address=head")


def test_launch_stops_on_a_tokenizer_that_cannot_serve_the_policy(tmp_path: Path):
    """One line, exit 2, no run dir (before the check, every worker died in turn with
    RayTaskError(ValueError) and the run ended with nothing done)."""
    from tests.test_first_hour import assert_one_line_exit_2, run_launch

    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer_config.json").write_text("{not json")
    run_dir = tmp_path / "run"
    proc = run_launch("policy=gold", f"policy.tokenizer={tmp_path}/tok", "tasks.max_items=2",
                      run_dir=run_dir)
    assert_one_line_exit_2(proc, run_dir, f"policy.tokenizer={tmp_path}/tok cannot be loaded")


# --- the policy server, by the policy type's own probe --------------------------------------


@pytest.mark.parametrize("kind, path", [("openai_completions", "/v1/models"),
                                        ("sglang", "/health")])
def test_an_endpoint_policy_is_probed_where_its_type_says(kind, path):
    from rollout.policy import PolicyConfig
    from rollout.settings.preflight import check_policy

    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(PreflightError) as info:
        check_policy(PolicyConfig(type=kind, base_url=url, tokenizer="t"))
    assert str(info.value) == (f"the policy server at policy.base_url={url} is not reachable "
                               f"(GET {path}: connection refused: nothing listens there); start "
                               "it or fix policy.base_url")


def test_a_policy_without_a_server_to_reach_is_not_probed():
    from rollout.policy import PolicyConfig
    from rollout.settings.preflight import check_policy

    for kind in ("gold", "scripted", "simulated", "embedded"):  # embedded: launch starts it
        check_policy(PolicyConfig(type=kind, tokenizer="t"))
