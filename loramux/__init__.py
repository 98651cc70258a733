"""loramux: one quantized base model, many LoRA adapters, one OpenAI-compatible server."""

__version__ = "0.1.0"
