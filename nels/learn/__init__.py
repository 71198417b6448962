"""The never-ending loop: classify the crawled pool, select what is recognised clearly, re-train,
evaluate, record per-class AP per iteration. Selection strategies are plug-ins (`select.py`)."""
