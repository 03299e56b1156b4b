"""N-shot episodes for mode=probe: which training features an episode sees, and the summary
over episodes.

An episode draws `shots` labelled examples per class, without replacement, from the
FlagLimit training subset (the cached training features), with a generator seeded by
(config.seed, episode): the same config gives the same episodes, and episode e is the same
whatever the number of episodes.  The summary is the mean over episodes and its 95%
t-interval (mean +- t(0.975, E - 1) * sd / sqrt(E)): an interval for the mean, i.e. for
what the method scores with N shots on average, not the spread of single episodes (those
are listed per episode).
"""
import numpy as np
from scipy import stats

SCALARS = ("accuracy", "balanced_accuracy", "macro_f1")


def check_shots(shots: int, counts, class_names):
  """A clear error when a class of the subset holds fewer than `shots` examples."""
  small = [(n, int(c)) for n, c in zip(class_names, counts) if int(c) < shots]
  if small:
    least = min(int(c) for c in counts)
    raise ValueError(
        f"config.probe.shots={shots} exceeds the training examples of class(es) "
        + ", ".join(f"{n!r} ({c})" for n, c in small)
        + f" in the FlagLimit subset; pass --config.probe.shots={least} or less (0: all)")


def sample(labels, shots: int, num_classes: int, seed: int, episode: int) -> np.ndarray:
  """Sorted positions in `labels` of `shots` examples of every class, for this episode."""
  rng = np.random.default_rng([int(seed), int(episode)])
  labels = np.asarray(labels)
  picked = [rng.choice(np.flatnonzero(labels == c), shots, replace=False)
            for c in range(num_classes)]
  return np.sort(np.concatenate(picked))


def interval(values) -> dict:
  """Mean, sample sd and the 95% t-interval of the mean of per-episode values (no interval
  from a single episode)."""
  v = np.asarray(values, np.float64)
  mean = float(v.mean())
  if len(v) < 2:
    return {"mean": mean, "sd": None, "low": None, "high": None}
  sd = float(v.std(ddof=1))
  half = float(stats.t.ppf(0.975, len(v) - 1) * sd / np.sqrt(len(v)))
  return {"mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def summary(per_episode: list, split: str) -> dict:
  """{metric: interval} over episodes for the split's scalar metrics."""
  return {m: interval([e[split][m] for e in per_episode]) for m in SCALARS}
