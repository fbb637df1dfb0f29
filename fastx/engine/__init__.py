"""fastx.engine: paged KV cache, continuous batching, sampling; `LLM` is the user-facing API."""
