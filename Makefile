# Set-up commands from the README. Each creates .venv and installs pinned deps if missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export MUJOCO_GL ?= egl

$(BIN)/.installed: pyproject.toml testing/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q -e ./testing   # test tooling: the local Hub server and its pytest fixtures
	touch $@

.PHONY: install test test-fast demo bench clean
install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q -ra

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

# the main job: fine-tune the embedded default checkpoint on a held-out task (CPU, minutes)
demo: install
	$(BIN)/accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		--num_cpu_threads_per_process $$($(BIN)/python -c "from mbdpo_hub.utils import recommended_threads as r; print(r(1))") \
		recipes/finetune.py --config recipes/configs/finetune.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache
