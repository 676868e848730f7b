"""The generation engine: `Engine` (own decode loop over Hugging Face weights).

Small files, nano-vllm style:
- `engine`: `Engine` and its decode loop (admission, forward, pick, jump-forward, retire);
- `model_runner`: the own Llama/Qwen2/Qwen3 forward (`NativeRunner`) and the generic
  fallback over any model's forward (`HFRunner`);
- `kv_cache`: the static KV cache and the shared-prefix KV;
- `cuda_graph`: the decode step replayed from CUDA graphs (batch buckets x tokens a row);
- `sampler`: sparse / dense picking under the matchers' bitmasks;
- `sequence`: one query's decoding state;
- `draft`: draft tokens for speculative steps (looked up in a sequence's own tokens);
- `screen`: greedy picks over large allowed sets on CPU (bf16 screen, exact fp32 recheck).
"""
from .engine import Engine, default_max_new_tokens

__all__ = ["Engine", "default_max_new_tokens"]
