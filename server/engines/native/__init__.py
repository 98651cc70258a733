"""The native LoRA op: one C++ call per LoRA linear layer on the CPU (lora_linear.cpp), built by
`make install` (build.py) and loaded, checked and chosen at start (loader.py); the torch ops of
lora_linear.py stay the fallback wherever it is not built or does not load."""
