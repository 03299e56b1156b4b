"""A finished training run, loaded back from its workdir: `load_run(workdir) -> Run`.

Used by every mode that evaluates a trained model (blur robustness, predict).  What a
caller may rely on, whatever the model family (the FM path will return the same shape):

  run.native_size     the dataset's patch size (40)
  run.input_size      the side the model takes; native_size for task-specific models,
                      224 for the FMs, which resize their input
  run.resize(x)       float (B, native, native, C) -> (B, input, input, C), jnp, traceable
  run.forward(state, x)   float [0, 1] images at input_size -> float32 logits, jnp,
                      traceable (normalisation and model, eval mode); `state` is
                      `run.state`, passed in so a jitted caller takes it as an argument
  run.uint8_forward(state, x)  uint8 native patches -> logits (to_float, resize, forward)
  run.logits(images)  uint8 (B, native, native, 3) -> logits (jitted once per shape)
  run.config, run.dataset, run.model, run.state, run.step, run.mesh, run.workdir

The config comes from workdir/config.json laid over today's defaults (so runs written
before a config field existed still load, with that field at its default), the state
from the latest orbax checkpoint.  Foundation-model runs return the same shape: a
finetune run is a checkpointed run like any other (input_size 224, resize with its
configured method); a probe run has no checkpoint: its backbone comes from
config.fm.weights and its head from workdir/probe_head.npz (probe_head.head_state).
"""
import dataclasses
import json
import os
from typing import Any, Optional

import jax
import ml_collections

from cellvit_jax import models, parallel
from cellvit_jax.data import datasets, flaglimit
from cellvit_jax.engine import steps
from cellvit_jax.engine import state as state_lib
from cellvit_jax.models.fm import lora
from cellvit_jax.modes import probe_head
from cellvit_jax.ops import normalize
from cellvit_jax.ops import resize as resize_ops
from cellvit_jax.runs import checkpoint, stored_config


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  dataset: datasets.CellDataset
  model: Any
  state: Any
  step: int
  total_steps: int
  mesh: jax.sharding.Mesh
  input_size: int = 0          # 0: the dataset's patch size (no resize)
  resize_method: str = "bilinear"
  _logits_fn: Any = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if not self.input_size:
      self.input_size = self.native_size

  @property
  def native_size(self) -> int:
    return self.dataset.image_size

  def resize(self, images):
    """Native patches -> the model's input size (the run's method); the identity when they agree."""
    return resize_ops.square(images, self.input_size, self.resize_method)

  def forward(self, state, images01):
    return steps.eval_logits(self.model, self.config.normalize, state, images01)

  def uint8_forward(self, state, images):
    """uint8 native patches -> float32 logits: to [0, 1], resize, forward; jnp, traceable."""
    return self.forward(state, self.resize(normalize.to_float(images)))

  def logits(self, images):
    """uint8 (B, H, W, 3) patches -> float32 logits (B, num_classes)."""
    if self._logits_fn is None:
      self._logits_fn = jax.jit(self.uint8_forward)
    return self._logits_fn(self.state, images)


def _not_a_run(workdir: str, why: str) -> FileNotFoundError:
  return FileNotFoundError(
      f"{workdir} holds no finished training run ({why}); train first, e.g. python -m "
      f"cellvit_jax.main --config=configs/customvit.py --workdir={workdir}")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """workdir/config.json brought to today's config (stored_config: older runs still load)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise _not_a_run(workdir, "no config.json")
  with open(path) as f:
    stored = json.load(f)
  return stored_config.over_defaults(stored)


def load_run(workdir: str, *, data_dir: Optional[str] = None, allow_unfinished: bool = False,
             mesh=None) -> Run:
  """Loads the run in `workdir`: config, dataset, model and its latest checkpointed state.

  Raises FileNotFoundError naming the workdir when it holds no finished run (no
  config.json, no checkpoint, or a checkpoint short of the run's last step unless
  `allow_unfinished`).  `data_dir` overrides the run's config.dataset.data_dir (a run
  moved to another machine).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(workdir):
    raise _not_a_run(workdir, "the directory does not exist")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # A linear-probe run (mode=probe) keeps its head in probe_head.npz, not in a checkpoint.
  config = load_config(workdir) if os.path.isfile(os.path.join(workdir, "config.json")) else None
  is_probe = config is not None and config.mode == "probe"
  # Checked first: the Checkpointer would create it.
  if not os.path.isdir(ckpt_dir) and not is_probe:
    raise _not_a_run(workdir, "no checkpoints/")
  config = config or load_config(workdir)  # no config.json: load_config names the workdir
  if is_probe and (config.probe.method != "logistic" or config.probe.shots or config.probe.run):
    p = config.probe
    raise ValueError(
        f"{workdir} holds a probe without a single model to load (probe.method={p.method!r}, "
        f"probe.shots={p.shots}, probe.run={p.run!r}); only a full-data logistic probe of a "
        "foundation model (the defaults) can be evaluated or predicted with")
  if data_dir is not None:
    config.dataset.data_dir = data_dir
  mesh = mesh if mesh is not None else parallel.make_mesh()

  dataset = datasets.open_configured(config.dataset, log=lambda *a: None)
  model = models.from_config(config.model, config.get("fm"), dataset.num_classes,
                             None if is_probe else config.get("finetune"))
  fm = dict(input_size=getattr(model, "input_size", 0),
            resize_method=getattr(model, "resize_method", "bilinear"))
  if is_probe:
    state = probe_head.head_state(config.fm, model, workdir, mesh)
    return Run(workdir=workdir, config=config, dataset=dataset, model=model, state=state,
               step=0, total_steps=0, mesh=mesh, **fm)
  # The optimiser exactly as training built it, so the checkpoint's tree matches.
  subset, _ = flaglimit.training_subset(dataset, config.dataset, config.seed)
  plan = state_lib.plan(model, config.optim, config.train, len(subset))
  total = plan.total_steps

  ckpt = checkpoint.Checkpointer(workdir)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise _not_a_run(workdir, "checkpoints/ is empty")
    if step < total and not allow_unfinished:
      raise _not_a_run(workdir, f"its latest checkpoint is step {step} of {total}; rerun the "
                       "training command to finish it")
    abstract = state_lib.build_state(model, plan.tx, dataset.image_size, mesh, abstract=True,
                                     ema=config.optim.ema_decay > 0)
    state = ckpt.restore(abstract, None, step=step)
  finally:
    ckpt.close()
  if lora.is_lora(model):  # served as the plain FM with merged weights W + (alpha / r) A B
    model, state = lora.merged_model_state(model, state, mesh)
  return Run(workdir=workdir, config=config, dataset=dataset, model=model, state=state,
             step=int(step), total_steps=total, mesh=mesh, **fm)
