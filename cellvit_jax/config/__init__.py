"""Configuration: every field with its default (defaults.py), loading a configs/*.py file with
its `:arg` suffix (files.py), and the range checks of numeric fields (ranges.py). Modes read a
config once at entry and hand each layer below only its own sections."""
