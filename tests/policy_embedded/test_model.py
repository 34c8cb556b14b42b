"""One-time GGUF conversion into the cache: safe when processes race, heals a crashed attempt."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.policy.embedded.model import checkpoint_dir, default_cache_dir, locate_gguf

ROOT = Path(__file__).resolve().parents[2]

CONVERT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from rollout.policy.embedded.model import ensure_checkpoint
print(json.dumps(str(ensure_checkpoint(sys.argv[1]))))
"""


def test_gguf_is_found_in_the_installed_wheel():
    path = locate_gguf()
    assert path.is_file() and path.suffix == ".gguf" and path.stat().st_size > 10_000_000


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ROLLOUT_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embedded"
    monkeypatch.delenv("ROLLOUT_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "rollout-cluster" / "embedded"


@pytest.mark.slow
def test_two_processes_converting_at_once_convert_once(tmp_path):
    target = checkpoint_dir(tmp_path)
    # Leftover of a conversion that crashed mid-write: no completion marker.
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"truncated")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONVERT, str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=280) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert {json.loads(out) for out, _ in outputs} == {str(target)}
    conversions = sum("converting" in err for _, err in outputs)
    assert conversions == 1
    assert (target / "rollout-conversion.json").is_file()
    assert (target / "model.safetensors").stat().st_size > 100_000_000  # the junk was replaced
    assert (target / "tokenizer.json").is_file() and (target / "chat_template.jinja").is_file()
    # No temp dirs left behind next to the checkpoint.
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]
