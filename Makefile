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
