"""Train / val / test splits by specimen, never by patch.

Crops of one specimen (patient, slide, image or tile, whatever the reader calls a specimen)
share staining, scanner and often the very same cells at a few pixels' shift, so a split by
patch would leak test information into training.  `assign_splits` deals whole specimens out
to the splits; `check_disjoint` verifies a finished split.

Allocation: the sorted distinct specimen ids are shuffled by `numpy.random.default_rng(seed)`
and cut into consecutive runs whose lengths follow `fractions` by largest remainder (ties to
the split listed first), with at least one specimen per split.  So the result depends only on
the set of specimens, the fractions and the seed, not on the order or multiplicity of the
input, and fractions count specimens, not patches (specimens with many patches make the
patch fractions drift; the writer reports the patch counts per split).
"""
from collections.abc import Iterable, Mapping

import numpy as np

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def assign_splits(specimens: Iterable[str], fractions: Mapping[str, float] = None,
                  seed: int = 0) -> dict[str, str]:
  """{specimen: split name} dealing whole specimens to the splits; see the module docstring.

  Args:
    specimens: specimen ids, e.g. [e['specimen'] for e in data.examples]; repeats are fine.
    fractions: {split name: fraction > 0}, summing to 1 (default train .7 / val .15 / test .15).
      To leave a split out, leave it out of the dict.
    seed: the shuffle seed; the same seed and specimens always give the same assignment.

  Raises:
    ValueError: bad fractions, or fewer distinct specimens than splits (every split must get
      at least one specimen).
  """
  fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
  if not fractions:
    raise ValueError("fractions is empty; give e.g. {'train': 0.7, 'val': 0.15, 'test': 0.15}")
  bad = {k: v for k, v in fractions.items() if not (isinstance(v, (int, float)) and v > 0)}
  if bad:
    raise ValueError(f"split fractions must be > 0, got {bad}; leave a split out instead of "
                     "giving it 0")
  total = sum(fractions.values())
  if abs(total - 1.0) > 1e-6:
    raise ValueError(f"split fractions must sum to 1, got {total} from {fractions}")
  unique = sorted({str(s) for s in specimens})
  n, k = len(unique), len(fractions)
  if n < k:
    raise ValueError(f"{n} distinct specimen(s) {unique} cannot fill {k} splits "
                     f"{list(fractions)}: every split needs at least one specimen, so at least "
                     f"{k} specimens are needed; add specimens, use fewer splits, or use a finer "
                     "specimen id")
  names = list(fractions)
  ideal = np.array([fractions[s] * n for s in names])
  counts = np.maximum(np.floor(ideal).astype(int), 1)
  # Hand out what is left by largest remainder; take back from the largest splits if the
  # minimum of one per split over-allocated.
  while counts.sum() < n:
    counts[int(np.argmax(ideal - counts))] += 1
  while counts.sum() > n:
    candidates = np.where(counts > 1, counts - ideal, -np.inf)
    counts[int(np.argmax(candidates))] -= 1
  order = np.random.default_rng(seed).permutation(n)
  assignment, start = {}, 0
  for name, c in zip(names, counts):
    for i in order[start:start + c]:
      assignment[unique[i]] = name
    start += c
  return assignment


def check_disjoint(split_specimens: Mapping[str, Iterable[str]]) -> None:
  """Raises ValueError naming every specimen found in more than one split.

  Args:
    split_specimens: {split name: specimen ids of its examples}, e.g.
      {s: [e['specimen'] for e in exs] for s, exs in split_examples(...).items()}.
  """
  where = {}
  for split, specs in split_specimens.items():
    for s in set(specs):
      where.setdefault(s, []).append(split)
  shared = {s: sorted(v) for s, v in where.items() if len(v) > 1}
  if shared:
    listed = "; ".join(f"{s!r} in {v}" for s, v in sorted(shared.items())[:20])
    more = f" (and {len(shared) - 20} more)" if len(shared) > 20 else ""
    raise ValueError(f"{len(shared)} specimen(s) appear in more than one split: {listed}{more}")


def split_examples(examples: list[dict], assignment: Mapping[str, str]) -> dict[str, list[dict]]:
  """{split: examples} following a specimen assignment; KeyError-free: unassigned is an error."""
  missing = sorted({e["specimen"] for e in examples} - set(assignment))
  if missing:
    raise ValueError(f"{len(missing)} specimen(s) have no split: {missing[:20]}")
  out = {split: [] for split in dict.fromkeys(assignment.values())}
  for e in examples:
    out[assignment[e["specimen"]]].append(e)
  return out
