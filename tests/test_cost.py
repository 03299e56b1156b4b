"""experiments.cost: XLA FLOPs per image, parameter count and timing rows."""
import json

import pytest

from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.experiments import cost


def _config(depth):
  config = config_defaults.get_config()
  # The linear patch tokenizer: the FLOPs then come almost all from the encoder blocks.
  config.model.kwargs.update(dict(dim=32, depth=depth, num_heads=2, patch_size=8,
                                  tokenizer="patch"))
  return config


def test_flops_grow_with_depth_and_rows_are_complete():
  shallow = cost.config_cost(_config(1).model, _config(1).normalize, batch_sizes=(1, 4),
                            min_seconds=0.0)
  deep = cost.config_cost(_config(3).model, _config(3).normalize, batch_sizes=(1, 4),
                         min_seconds=0.0)
  assert shallow["gflops_per_image"] > 0
  assert set(deep["images_per_sec"]) == {"1", "4"}
  assert all(v > 0 for v in deep["images_per_sec"].values())
  assert deep["params"] > shallow["params"]
  # Two more identical blocks: FLOPs rise by a clear step, but less than 3x (stem and head stay).
  assert 1.5 < deep["gflops_per_image"] / shallow["gflops_per_image"] < 3.0
  table = cost.markdown_table([shallow, deep])
  assert "GFLOPs/image" in table and "images/s @4" in table


def test_bad_batch_sizes_are_named():
  with pytest.raises(ValueError, match="batch_sizes"):
    cost.config_cost(_config(1).model, _config(1).normalize, batch_sizes=(0,))


def test_replace_block_rewrites_only_the_marked_table(tmp_path):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{cost.BLOCK_START}\nold table\n{cost.BLOCK_END}\nrest\n")
  cost.replace_block(str(readme), "| new |\n")
  assert readme.read_text() == f"intro\n{cost.BLOCK_START}\n| new |\n{cost.BLOCK_END}\nrest\n"
  plain = tmp_path / "plain.md"
  plain.write_text("no markers\n")
  with pytest.raises(ValueError, match="cost table: start"):
    cost.replace_block(str(plain), "| new |\n")
  assert plain.read_text() == "no markers\n"


def test_config_model_reads_a_config_and_a_results_row_alike():
  config = _config(1)
  from_config = cost.config_model(config.model)
  from_row = cost.config_model(config.to_dict()["model"])  # a results.json's `config`
  assert from_config == from_row and from_config.depth == 1 and from_config.num_classes == 4


def test_write_outputs_prints_and_writes_each_file(tmp_path, monkeypatch, capsys):
  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n{cost.BLOCK_START}\nold\n{cost.BLOCK_END}\nrest\n")
  monkeypatch.setattr("sys.argv", ["fm_cost", "--presets=plip", f"--update={readme}"])
  rows = [{"model": "m", "gflops_per_image": 1.0}]
  cost.write_outputs(rows, "| t |\n", program="cellvit_jax.experiments.fm_cost",
                     output=str(tmp_path / "rows.json"), markdown=str(tmp_path / "t.md"),
                     update=str(readme))
  assert "| t |" in capsys.readouterr().out
  assert json.loads((tmp_path / "rows.json").read_text()) == rows
  assert (tmp_path / "t.md").read_text() == "| t |\n"
  text = readme.read_text()
  assert "| t |\nMade by `python -m cellvit_jax.experiments.fm_cost --presets=plip` on " in text
  assert text.startswith("intro\n") and text.endswith(f"{cost.BLOCK_END}\nrest\n")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "rows.json", "t.md"]  # no temp
