"""The sealed test split: a run reads its test split only when its config asks
(config.evaluate_test), and says whether and when it did.

Screening runs (the design study, the ablation notebook, a study's screening mode) choose on
val and leave test unread, so "chosen on val, reported on test once" is enforced by code
rather than by convention. A run that read test records `test_read: true` and the UTC time
(`test_read_at`) in results.json; a screening run records `test_read: false` and holds no
test metrics. Tools that evaluate a finished run (blur, robustness) read test only of a run
that was itself allowed to; export_rows refuses test metrics of a screening run.
"""
import time

KEY = "evaluate_test"


def check(config) -> bool:
  """config.evaluate_test as a bool, or a clear error."""
  value = config.get(KEY)
  if not isinstance(value, bool):
    raise ValueError(f"config.{KEY}={value!r} must be True or False (True: the run reads and "
                     f"scores its test split; False: a screening run, val only); pass "
                     f"--config.{KEY}=false or --config.{KEY}=true")
  return value


def read_fields(read: bool) -> dict:
  """results.json's record of the test split: whether it was read and, if so, when (UTC)."""
  return {"test_read": bool(read),
          "test_read_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) if read else None}


def run_reads_test(config_dict: dict) -> bool:
  """Whether a stored run config (config.json / results.json's `config`) allows test: runs
  written before the switch existed read test on every run (stored_config.ADDED_KEYS)."""
  return bool(config_dict.get(KEY, True))


def record_read_test(record: dict) -> bool:
  """Whether a results.json record holds test metrics that the run was allowed to read."""
  allowed = run_reads_test(record.get("config") or {})
  return bool(record.get("test_read", allowed)) and allowed and "test" in record


def split_of_finished_run(run_config, split: str, tool: str) -> str:
  """The split a tool evaluating a finished run (blur, robustness) reads: `split` if given,
  else the run's test split for a final run and its val split for a screening run; test of a
  screening run is refused."""
  test_split = run_config.dataset.test_split
  allowed = bool(run_config.get(KEY, True))
  if not split:
    return test_split if allowed else run_config.dataset.eval_split
  if split == test_split and not allowed:
    raise ValueError(
        f"config.{tool}.split={split!r} is the test split of a screening run "
        f"(its config.{KEY}=False): its test split is sealed. Evaluate it on val "
        f"(--config.{tool}.split={run_config.dataset.eval_split}, or leave the split empty), "
        f"or train the final run with --config.{KEY}=true and evaluate that one")
  return split
