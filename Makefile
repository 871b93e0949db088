# Two commands do everything on a fresh clone:
#   make demo   - set up the virtualenv and run the pipeline on the bundled synthetic log
#   make test   - set up the virtualenv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_OUT ?= .
CONFIG ?= conf/local.toml
ARGS   ?=

.PHONY: setup demo test lint bench quality ml100k ml100k-all dist clean clean-data check-java cluster-up cluster-down

setup: $(STAMP)

check-java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "error: Java 17+ is required by Spark and was not found on PATH."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; \
	  echo "  macOS:         brew install openjdk@17"; exit 1; }
	@v=$$(java -version 2>&1 | awk -F'"' '/version/ {print $$2}' | awk -F. '{print ($$1=="1") ? $$2 : $$1}'); \
	 if [ "$${v:-0}" -lt 17 ]; then \
	  echo "error: Java 17+ is required by Spark; found Java $$v."; \
	  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless"; exit 1; fi

$(STAMP): pyproject.toml | check-java
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $(STAMP)
	@echo "virtualenv ready in $(VENV)"
	@ldconfig -p 2>/dev/null | grep -q 'libblas.so.3 ' || echo "note: no libblas.so.3 found, so Spark MLlib \
	will use pure-Java BLAS (slower ALS). For native BLAS: sudo apt-get install -y libopenblas0-pthread"

demo: setup
	$(BIN)/recsys-spark --config $(CONFIG) demo $(ARGS)

test: setup
	$(BIN)/python -m pytest $(ARGS)

# Lint and format check (rules and their reasons: pyproject.toml [tool.ruff]); CI fails on either.
# `$(BIN)/ruff format . && $(BIN)/ruff check --fix .` mends most of what it reports.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# BENCHMARKS.md and benchmarks.json in the repository root; ARGS="--quick" for the CI-sized smoke run
bench: setup
	$(BIN)/python -m recsys_spark.bench --out $(BENCH_OUT) $(ARGS)

# Recommendation quality on the public datasets (../shared/data) against implicit and a numpy EASE,
# in the same run on the same splits: its section of BENCHMARKS.md, merged into the last full run.
# DATASETS="lastfm-2k amazon-5core" runs some of ml-100k, lastfm-2k, ml-latest-small,
# ml-latest-small-last and amazon-5core, keeping the others' earlier figures. TUNE=1 switches every
# search on (als.tune, similarity.tune, candidates.tune) whatever the configs ship.
DATASETS ?=
quality: setup
	RECSYS_QUALITY_DATASETS="$(DATASETS)" RECSYS_QUALITY_TUNE="$(TUNE)" $(BIN)/python -m recsys_spark.bench --only quality --merge --out $(BENCH_OUT) $(ARGS)

# ML-100K, one official fold (needs ../shared/data): the served tables built from uN.base alone,
# through the commands a user runs, into data/ml-100k/uN/warehouse; then those very lists scored
# against uN.test. `make ml100k-all` runs the five folds and prints the README's table.
# TUNE=1 runs the searches (als.tune, similarity.tune, candidates.tune) on a validation carve-out
# of uN.base instead of using the settings conf/movielens-100k.toml ships (which the searches chose on u1).
FOLD   ?= u1
ML100K ?= ../shared/data/ml-100k
ML100K_TUNE = $(if $(TUNE),--set als.tune=true --set similarity.tune=true --set candidates.tune=true)
ML100K_RUN = $(BIN)/recsys-spark --config conf/movielens-100k.toml $(ML100K_TUNE) \
	--set storage.root=data/ml-100k/$(FOLD)/warehouse --set spark.checkpoint_dir=data/ml-100k/$(FOLD)/checkpoints \
	--set evaluation.output_dir=data/ml-100k/$(FOLD)/reports --set ingest.source.path=$(ML100K)/$(FOLD).base
ml100k: setup
	@test -f $(ML100K)/$(FOLD).base || { echo "error: $(ML100K)/$(FOLD).base not found; set ML100K=<ml-100k folder>"; exit 2; }
	$(ML100K_RUN) ingest
	$(ML100K_RUN) train-als
	for method in cosine ease rp3beta; do $(ML100K_RUN) --set similarity.method=$$method item-similarity || exit 1; done
	$(ML100K_RUN) topk
	$(ML100K_RUN) --set evaluation.split=served --set evaluation.given_test=$(ML100K)/$(FOLD).test evaluate

ml100k-all: setup
	for fold in u1 u2 u3 u4 u5; do $(MAKE) --no-print-directory ml100k FOLD=$$fold || exit 1; done
	$(BIN)/recsys-spark compare data/ml-100k/u?/reports/latest/evaluation.json

# For spark-submit: dist/recsys_spark.zip goes to --py-files; the wheel installs the library
# (and its dependencies) on nodes that lack them. Neither holds the benchmarks or the dev tools
# (pyproject.toml excludes the same packages from the wheel).
DEV_PACKAGES = ('bench', 'dev')
dist: setup
	rm -rf dist && mkdir -p dist
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -c "import pathlib, zipfile; z = zipfile.ZipFile('dist/recsys_spark.zip', 'w', zipfile.ZIP_DEFLATED); \
	[z.write(p) for p in sorted(pathlib.Path('recsys_spark').rglob('*.py')) if p.parts[1] not in $(DEV_PACKAGES)]; z.close()"
	@ls -l dist

# A Spark standalone cluster on 127.0.0.1 (one master, two 1-core worker JVMs) for trying
# spark-submit: README "Running on a cluster". State and logs in $(CLUSTER_DIR).
CLUSTER_DIR ?= .cluster
cluster-up: setup
	$(BIN)/python -m recsys_spark.dev.cluster up --dir $(CLUSTER_DIR)

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m recsys_spark.dev.cluster down --dir $(CLUSTER_DIR); fi

clean-data:
	rm -rf data/cluster data/warehouse data/raw data/checkpoints data/spark-warehouse data/reports data/ml-100k

clean: clean-data
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
