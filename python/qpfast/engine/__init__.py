"""The generation engine: `Engine` (own decode loop over Hugging Face weights).

Small files, nano-vllm style:
- `engine`: `Engine` and its decode loop (admission, forward, pick, jump-forward, retire);
- `model_runner`: the own Llama/Qwen2/Qwen3 forward (`NativeRunner`) and the generic
  fallback over any model's forward (`HFRunner`);
- `kv_cache`: the static KV cache and the shared-prefix KV;
- `sampler`: sparse / dense picking under the matchers' bitmasks;
- `sequence`: one query's decoding state.
"""
from .engine import Engine, default_max_new_tokens

__all__ = ["Engine", "default_max_new_tokens"]
