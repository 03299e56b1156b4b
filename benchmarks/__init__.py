"""Speed benchmarks, each printing a ratio against a named baseline.

Run each as a module from the repository root, e.g. `python -m benchmarks.train_step --help`
(no PYTHONPATH needed: `-m` puts the current directory on the import path).
"""
