PYTHON ?= python

.PHONY: replication replication-quick replication-report

# Train and evaluate the four variants on both tasks, 3 seeds (about 30 minutes on 2 cores; delete the
# old docs/results/replication-{stdlib,glyphs}.json first when the settings changed);
# one process per task, one thread each, then the merged report in docs/results/.
replication:
	$(PYTHON) experiments/replicate.py --tasks stdlib --results docs/results/replication-stdlib.json --report runs/replication/report-stdlib.md & \
	$(PYTHON) experiments/replicate.py --tasks glyphs --results docs/results/replication-glyphs.json --report runs/replication/report-glyphs.md; \
	wait
	$(MAKE) replication-report

replication-report:
	$(PYTHON) experiments/replicate.py --report-only --results docs/results/replication-stdlib.json,docs/results/replication-glyphs.json

# The whole pipeline at toy sizes, in seconds (numbers meaningless).
replication-quick:
	$(PYTHON) experiments/replicate.py --quick

.PHONY: builtin-data builtin-select builtin-model builtin-report

# The built-in model metaembed-minilm: its data from Debian's documentation packages (root, apt),
# the 3 variants x 3 seeds through the public trainer in one process (they share MiniLM's frozen
# page states, so each training page runs through MiniLM once), the held-out evaluation,
# docs/results/builtin-model.{json,md}, and the seed-0 MMR model copied into the package.
BUILTIN_DOCS = python3.11-doc python-django-doc python-flask-doc python-werkzeug-doc python-jinja2-doc \
	python-click-doc python-requests-doc python-attr-doc python-pytest-doc python-markdown-doc \
	python-babel-doc python-setuptools-doc

builtin-data:
	apt-get install -y --no-install-recommends $(BUILTIN_DOCS)
	$(PYTHON) -m metaembed.quickstart.docpages --out runs/docpages

# How the recipe's defaults were chosen: candidate recipes, seed 0, scored on the validation pages
# (training manuals, pages kept out of training); the held-out manuals are not read.
builtin-select: builtin-data
	for recipe in "steps=300 normalize_scores=false" "steps=300 normalize_scores=true"; do \
		tag=$$(echo $$recipe | tr ' =' '-_'); \
		OMP_NUM_THREADS=2 $(PYTHON) experiments/builtin_model.py --phases train,eval --threads 2 --seeds 0 \
			--variants mmr --out runs/select/$$tag --set $$recipe --collection runs/docpages/validation.json.gz; \
	done

builtin-model: builtin-data
	OMP_NUM_THREADS=2 $(PYTHON) experiments/builtin_model.py --phases train,eval,report,ship --threads 2

builtin-report:
	$(PYTHON) experiments/builtin_model.py --phases report

.PHONY: bench-approximate bench-memory bench-codecs-scale

# Approximate search on real embeddings at N = 100k (issue 20): 100,000 40-word passages of three
# Debian doc packages (python3.11-doc, python-django-doc, postgresql-doc-15, installed with apt-get,
# so as root; no manual pages) embedded by the built-in model (about 75 minutes on
# 2 Zen 3 cores before the one-way input path ran on real tokens only; about 90 on 2 Zen 1 cores
# after it, 44,845 passages in 40 minutes; rerun to resume an interrupted build), 512 heading queries; exact, coarse and ann
# beside xtr-warp-rs over the same stored vectors. xtr-warp needs its own environment
# (requirements-peers.txt): XTR_PYTHON=/path/to/its/bin/python.
APPROX_DIR ?= runs/approximate
XTR_PYTHON ?= $(METAEMBED_XTR_PYTHON)
bench-approximate:
	apt-get install -y --no-install-recommends python3.11-doc python-django-doc postgresql-doc-15
	$(PYTHON) -m benchmarks.data --out $(APPROX_DIR)
	$(PYTHON) -m metaembed.cli index build -i $(APPROX_DIR)/passages.jsonl -o $(APPROX_DIR)/index --batch-size 64
	OMP_NUM_THREADS=2 $(PYTHON) -m benchmarks.coarse_to_fine --index $(APPROX_DIR)/index --queries $(APPROX_DIR)/queries.jsonl \
		--field text --shortlists 10,20,50,100,200,500,1000,2000 $(if $(XTR_PYTHON),--xtr-python $(XTR_PYTHON),) --name "approximate-{cpu}"

# Storage codecs on bench-approximate's index (issue 20): every codec's top-10 overlap with exact
# float32 search per budget, on passages its codebooks never saw (fit on 4,096 others; ppq's sample);
# about 25 minutes on 2 Zen 5 cores.
bench-codecs-scale:
	OMP_NUM_THREADS=2 $(PYTHON) -m benchmarks.codecs --index $(APPROX_DIR)/index --queries $(APPROX_DIR)/queries.jsonl \
		--codecs int8,pq2,apq2,ppq2,ppq4 --fit-pages 4096 --repeats 1 --threads 2 --out "benchmarks/results/codecs-scale-{cpu}"

# The index memory each budget and search mode keeps in the page cache, on bench-approximate's index
# (Linux; a minute).
bench-memory:
	OMP_NUM_THREADS=2 $(PYTHON) -m benchmarks.memory --index $(APPROX_DIR)/index --queries $(APPROX_DIR)/queries.jsonl \
		--name "memory-{cpu}"
