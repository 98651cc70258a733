"""Real pretrained base models: GGUF files converted into plain transformers folders.

Everything else in loramux reads a base from a transformers folder (config, safetensors, tokenizer
with its chat template, generation config). This part turns a GGUF checkpoint into one such folder,
once, with its provenance beside it, so the trainer and the server never see GGUF at all.
"""
