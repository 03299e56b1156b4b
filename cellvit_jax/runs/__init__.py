"""Run bookkeeping: the run directory and its config check on resume (workdir.py), one process
per workdir (lock.py), orbax checkpoints (checkpoint.py), metrics.jsonl and TensorBoard
(metric_writers.py), the results.json record (record.py), the sealed test split (sealed_test.py)
and stored configs brought to today's fields (stored_config.py)."""
