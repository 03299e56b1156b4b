"""notebooks/ablation_customvit.ipynb runs headless (nbclient) with a tiny parameter cell."""
import json
import os

import nbformat
from nbclient import NotebookClient

from conftest import REPO, TINY_SPEC

NOTEBOOK = os.path.join(REPO, "notebooks", "ablation_customvit.ipynb")


def _tiny_parameters(data_dir, workdir):
  overrides = {
      "dataset.name": "synthetic_cells_tiny", "dataset.flaglimit": 32,
      **{f"dataset.synthetic.{k}": v for k, v in TINY_SPEC.items()},
      "model.kwargs.dim": 16, "model.kwargs.depth": 1, "model.kwargs.num_heads": 2,
      "model.kwargs.patch_size": 8, "model.kwargs.drop_path": 0.0,
      "train.batch_size": 32, "train.eval_batch_size": 64, "train.epochs": 1.0,
      "train.eval_every_epochs": 1.0, "train.progress_bar": False,
  }
  # Two variants, the second flipping every switch (each variant costs a compilation).
  # A dotted key is a config (recipe) switch: the second variant's run must have used it.
  variants = {"baseline": {}, "SPT + LSA": {"spt": True, "lsa": True, "patch_size": 4,
                                            "pool": "gap", "depth": 2, "optim.lr": 7e-4}}
  return (f"import sys\nsys.path.insert(0, {REPO!r})\n"
          f"CONFIG = {os.path.join(REPO, 'configs', 'customvit.py')!r}\n"
          f"DATA_DIR = {data_dir!r}\nOVERRIDES = {overrides!r}\nVARIANTS = {variants!r}\n"
          f"WORKDIR = {workdir!r}\nSEED = 0\n")


def test_ablation_notebook_executes_with_tiny_parameters(tiny_data_dir, tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
  tagged[0].source = _tiny_parameters(tiny_data_dir, str(tmp_path / "runs"))
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}}).execute()
  outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  for name in ("baseline", "SPT + LSA"):
    assert f"| {name} |" in outputs
  assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
             for o in c.get("outputs", []))
  assert (tmp_path / "runs" / "ablation.png").is_file()
  assert (tmp_path / "runs" / "SPT_plus_LSA" / "results.json").is_file()
  with open(tmp_path / "runs" / "SPT_plus_LSA" / "config.json") as f:
    stored = json.load(f)
  assert stored["optim"]["lr"] == 7e-4 and stored["model"]["kwargs"]["lsa"] is True
  # The variants are screening runs: test sealed (the base config alone would read it).
  assert stored["evaluate_test"] is False
  with open(tmp_path / "runs" / "SPT_plus_LSA" / "results.json") as f:
    results = json.load(f)
  assert results["test_read"] is False and "test" not in results
