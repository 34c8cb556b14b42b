"""`load_tokenizer` takes the class a local tokenizer directory names without AutoTokenizer's
model-config imports (torch among them), and it is the class AutoTokenizer would give."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rollout.policy.template import _named_class, load_tokenizer
from tests.launch_config import qwen_tokenizer_dir

ROOT = Path(__file__).resolve().parents[2]


def test_a_named_class_loads_without_torch_and_is_autotokenizers_choice():
    code = (
        "import sys\n"
        "from rollout.policy.template import load_tokenizer\n"
        f"tok = load_tokenizer({str(qwen_tokenizer_dir())!r})\n"
        "print(type(tok).__name__, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    assert out == ["Qwen2Tokenizer", "False"], out
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()), local_files_only=True)
    ours = load_tokenizer(str(qwen_tokenizer_dir()))
    assert type(ours) is type(auto)
    text = "def f(x):\n    return x  # <|im_end|> ünï"
    assert ours(text)["input_ids"] == auto(text)["input_ids"]


def test_what_autotokenizer_must_decide_is_left_to_it(tmp_path):
    for config in ({"auto_map": {"AutoTokenizer": ["x.T", None]}, "tokenizer_class": "Qwen2Tokenizer"},
                   {"tokenizer_class": "NoSuchTokenizer"}, {"tokenizer_class": "os.system"},
                   {"tokenizer_class": "AutoConfig"}, {}, ["not", "a", "dict"]):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        assert _named_class(str(tmp_path)) is None, config
    assert _named_class(str(tmp_path / "missing")) is None
    assert _named_class("Qwen/Qwen3-8B") is None  # a hub name: AutoTokenizer's
