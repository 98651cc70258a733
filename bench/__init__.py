"""`loramux bench`: loramux measured side by side with the servers users would pick instead.

One run builds its own workload (a random-weight Llama and random LoRA adapters in a scratch
registry), drives loramux, vLLM's own OpenAI server and a naive transformers + peft server with
the same load generator and the same requests, and writes `bench/results/<timestamp>.{json,md,png}`.
"""
