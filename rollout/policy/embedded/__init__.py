"""The embedded policy: SmolLM2-135M-Instruct on CPU behind an OpenAI-compatible server.

Public API (torch is imported only when a model is loaded):

- `EmbeddedServerProcess(...).start(timeout) -> base_url`, `.stop()`: run the server as a
  subprocess (launcher.py).
- `ensure_checkpoint(cache_dir=None) -> Path`: convert the bundled GGUF once into the cache;
  the directory also holds the tokenizer and chat template (model.py).
- `load_model`, `BatchedEngine`, `create_app`: in-process use (model.py, engine.py, server.py).
"""

from .launcher import EmbeddedServerProcess
from .model import checkpoint_dir, default_cache_dir, ensure_checkpoint, load_model

__all__ = ["EmbeddedServerProcess", "checkpoint_dir", "default_cache_dir", "ensure_checkpoint", "load_model"]
