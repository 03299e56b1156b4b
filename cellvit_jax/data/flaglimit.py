"""FlagLimit: at most N training samples per class, chosen deterministically by seed.

For a seed, each class gets one fixed permutation of its sample indices and FlagLimit N
takes its first N, so subsets are nested across scales (the 512 subset contains the 256
subset) and learning curves differ by data, not by draw. Classes with fewer than N
samples keep all of them. Only labels are needed (read from the dataset's metadata).
"""
import numpy as np


def select(labels, limit: int, seed: int) -> np.ndarray:
  """Indices (sorted ascending) of the FlagLimit subset of `labels`."""
  if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)):
    raise ValueError(f"FlagLimit must be an integer number of samples per class, got {limit!r}")
  if limit < 1:
    raise ValueError(f"FlagLimit must be at least 1 sample per class, got {limit}; "
                     "set config.dataset.flaglimit to e.g. 256")
  labels = np.asarray(labels)
  chosen = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    # One stream per (seed, class): adding a class or changing N never reshuffles others.
    perm = np.random.default_rng([seed, int(c)]).permutation(len(members))
    chosen.append(members[perm[:limit]])
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def counts(labels, indices, num_classes: int) -> np.ndarray:
  return np.bincount(np.asarray(labels)[indices], minlength=num_classes)


def training_subset(dataset, dataset_cfg, seed: int, log=None):
  """(indices, per-class counts) of the FlagLimit subset a run trains on: config.dataset's
  train_split and flaglimit with the run's seed. Every mode derives it here; `log` (e.g.
  logging.info) is told the counts, and which classes the limit leaves patches out of."""
  labels = dataset.labels(dataset_cfg.train_split)
  indices = select(labels, dataset_cfg.flaglimit, seed)
  chosen = counts(labels, indices, dataset.num_classes)
  if log is not None:
    log("FlagLimit %d (seed %d): %d training patches, per class %s", dataset_cfg.flaglimit, seed,
        len(indices), dict(zip(dataset.class_names, chosen.tolist())))
    available = counts(labels, np.arange(len(labels)), dataset.num_classes)
    capped = {n: int(a) for n, a, c in zip(dataset.class_names, available, chosen) if a > c}
    if capped:
      log("FlagLimit %d leaves out training patches of %s (available per class: %s); raise "
          "--config.dataset.flaglimit to train on more.", dataset_cfg.flaglimit,
          ", ".join(capped), capped)
  return indices, chosen
