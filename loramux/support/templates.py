"""Chat templates of real models, as text, for tests that need a model's template without its
files: the same string in every test that renders with it."""

from __future__ import annotations

# SmolLM2-Instruct's template: ChatML, a default system prompt when the conversation has none,
# and no {% generation %} markers (TRL cannot patch it, so loramux masks its assistant turns).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
