"""Where weights come from: the Hub or a folder, safetensors files, GGUF files, the embedded default models.

Import from the modules: `fastx.checkpoints.hub`, `.safetensors`, `.gguf`, `.defaults`.
"""
