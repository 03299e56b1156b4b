"""Data: datasets by name (synthetic_cells rendered on first use, built ones read through
tfds.data_source), the FlagLimit training subset, grain pipelines of uint8 batches or of
indices into the subset held on the devices (on_device.py), and reading patch files (shared
with data_prep)."""
