"""What tests, benchmarks and the demo share and the product does not need.

- launch.py: a server (`loramux serve`, `loramux registry serve`, vLLM's own) as a child process
  on loopback, ready when its health route answers;
- ports.py: ports without a race (the child binds port 0; we read back the port it got);
- adapters.py: random LoRA adapters in PEFT's on-disk format, written from shapes.

Label `k=v` parsing is the registry's (one parser for the CLI, the HTTP API and these tools).
Nothing here is imported by the registry, the server or the trainer.
"""
