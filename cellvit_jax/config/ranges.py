"""One range check for numeric config fields: a one-line error naming the key and a fix.

Used by the optimiser's and the augmentation's config checks (optimizer.check_optim,
steps.check_augment), which run before a run writes anything.
"""
import math


def check_number(key: str, value, low: float, high: float, *, low_open: bool = False,
                 high_open: bool = False, note: str, example: str) -> float:
  """`value` of config.`key` as a float, or a ValueError unless it is a finite number between
  `low` and `high` (each end excluded when its `*_open` is set)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  above = v > low if low_open else v >= low
  below = v < high if high_open else v <= high
  if not (math.isfinite(v) and above and below):
    if math.isfinite(high):
      bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    else:
      bounds = f"{'>' if low_open else '>='} {low:g}"
    raise ValueError(f"config.{key}={value!r} must be a finite number {bounds} ({note}); "
                     f"pass e.g. --config.{key}={example}")
  return v
