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

.PHONY: setup demo test bench evaluate-ml100k dist clean clean-data check-java cluster-up cluster-down

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

# BENCHMARKS.md and benchmarks.json in the repository root; ARGS="--quick" for the CI-sized smoke run
bench: setup
	$(BIN)/python -m recsys_spark.bench --out $(BENCH_OUT) $(ARGS)

# ML-100K on its five official folds (needs ../shared/data): the README's evaluation table.
evaluate-ml100k: setup
	$(BIN)/recsys-spark --config conf/movielens-100k.toml ingest
	$(BIN)/recsys-spark --config conf/movielens-100k.toml evaluate

# For spark-submit: dist/recsys_spark.zip goes to --py-files; the wheel installs the library
# (and its dependencies) on nodes that lack them.
dist: setup
	rm -rf dist && mkdir -p dist
	$(BIN)/pip wheel --quiet --no-deps -w dist .
	$(BIN)/python -c "import shutil; shutil.make_archive('dist/recsys_spark', 'zip', '.', 'recsys_spark')"
	@ls -l dist

# A Spark standalone cluster on 127.0.0.1 (one master, two 1-core worker JVMs) for trying
# spark-submit: README "Running on a cluster". State and logs in $(CLUSTER_DIR).
CLUSTER_DIR ?= .cluster
cluster-up: setup
	$(BIN)/python -m recsys_spark.devcluster up --dir $(CLUSTER_DIR)

cluster-down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m recsys_spark.devcluster down --dir $(CLUSTER_DIR); fi

clean-data:
	rm -rf data/cluster data/warehouse data/raw data/checkpoints data/spark-warehouse data/reports data/ml-100k

clean: clean-data
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
