"""LoRA fine-tuning of a foundation model (config.finetune.method = 'lora').

The FM's modules are not rewritten.  Each targeted Dense kernel W of the backbone's blocks
gets two fp32 factors A (in, r), normal with std 1/sqrt(in), and B (r, out), zeros; the
forward runs the unchanged FoundationModel on the frozen base and adds (alpha / r) (x A) B
to each targeted Dense's output (flax's method interception).  B = 0 makes the first
forward the base model's exactly; merged kernels W + (alpha / r) A B give the same function.

Who holds what:
  params (trained, in the optimiser state and the checkpoint)
      {"lora": {<backbone path>: {"a", "b"}}, "head": {"kernel", "bias"}}
  state.frozen (the base backbone, in the compute dtype; never in the optimiser state nor in
      the checkpoint: runs/checkpoint.py leaves it out and restore takes it from the target,
      which reads it from config.fm.weights)
  state.base_fingerprint (uint32[8], sha256 of the base weights; saved, so a restore onto
      other base weights is refused instead of silently pairing adapters with the wrong base)

`merged_params(model, params, frozen)` gives the plain FoundationModel's params (export,
mode=predict: finished_run.load_run serves a LoRA run as its merged FM).
"""
import hashlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax.models import interface
from cellvit_jax.models.fm import foundation

METHODS = ("full", "lora")
_BLOCK = re.compile(r"^(.*/layers?/\d+)/(.+)/kernel$")


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def target_kernels(backbone_abstract) -> dict:
  """{backbone path of a block's 2-D Dense kernel: its module path inside the block}, e.g.
  'encoder/layer/0/attention/attention/query/kernel': 'attention/attention/query'."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(backbone_abstract)[0]:
    m = _BLOCK.match(_path_str(path))
    if m and leaf.ndim == 2:
      out[_path_str(path)] = m.group(2)
  return out


def parse_targets(targets) -> tuple:
  if isinstance(targets, str):
    targets = targets.split(",")
  return tuple(t.strip().strip("/") for t in targets if t.strip())


def select_targets(backbone_abstract, targets) -> tuple:
  """The kernel paths config.finetune.lora_targets names ('all': every block kernel; else
  module paths inside a block, each matching the path's end, e.g. 'query' or 'mlp/fc1')."""
  kernels = target_kernels(backbone_abstract)
  names = parse_targets(targets)
  valid = sorted(set(kernels.values()))
  if not names:
    raise ValueError("config.finetune.lora_targets is empty; use 'all' or module paths inside "
                     f"a block, comma-separated, of: {', '.join(valid)}")
  if names == ("all",):
    return tuple(sorted(kernels))
  chosen = set()
  for name in names:
    hits = [p for p, mod in kernels.items() if mod == name or mod.endswith("/" + name)]
    if not hits:
      raise ValueError(f"config.finetune.lora_targets: {name!r} names no Dense kernel of this "
                       f"FM's blocks; valid: all, {', '.join(valid)}")
    chosen.update(hits)
  return tuple(sorted(chosen))


def check_finetune(finetune_cfg, model_dtype: str = "", ema_decay: float = 0.0):
  """Checks config.finetune once, at entry (one-line errors)."""
  method = finetune_cfg.method
  if method not in METHODS:
    raise ValueError(f"config.finetune.method={method!r}; valid: {', '.join(METHODS)}")
  if method != "lora":
    return
  rank = finetune_cfg.lora_rank
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
    raise ValueError(f"config.finetune.lora_rank={rank!r} must be a positive int, e.g. 8")
  alpha = finetune_cfg.lora_alpha
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
      np.isfinite(alpha) and alpha > 0):
    raise ValueError(f"config.finetune.lora_alpha={alpha!r} must be a positive number, e.g. "
                     "16 (the update is scaled by alpha / rank)")
  if ema_decay > 0:
    raise ValueError("config.finetune.method='lora' keeps no moving average of the weights; "
                     "set config.optim.ema_decay=0")


class FrozenBase:
  """The base backbone's weights (numpy, as loaded), read once on first use; hashed by
  identity so that a module holding it stays hashable."""

  def __init__(self, load, abstract):
    self._load, self._params, self._fingerprint = load, None, None
    self.abstract = abstract  # the backbone's shapes (ShapeDtypeStructs)

  @property
  def params(self) -> dict:
    if self._params is None:
      self._params = self._load()
    return self._params

  @property
  def fingerprint(self) -> np.ndarray:
    if self._fingerprint is None:
      self._fingerprint = fingerprint(self.params)
    return self._fingerprint


def fingerprint(params) -> np.ndarray:
  """sha256 of a param tree (paths, shapes, dtypes, bytes) as uint32[8]."""
  h = hashlib.sha256()
  for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(params)[0],
                           key=lambda x: _path_str(x[0])):
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{_path_str(path)}|{a.shape}|{a.dtype}|".encode())
    h.update(a.tobytes())
  return np.frombuffer(h.digest(), np.uint32).copy()


def _set(tree: dict, path: str, value):
  *parents, last = path.split("/")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[last] = value


def _get(tree, path: str):
  for p in path.split("/"):
    tree = tree[p]
  return tree


class LoraFoundationModel(interface.Model):
  """`fm` with LoRA adapters on `targets` (backbone kernel paths); the base backbone comes in
  the 'frozen' variable collection (steps.py passes state.frozen there)."""
  fm: foundation.FoundationModel
  base: Any                      # FrozenBase
  targets: tuple
  rank: int
  alpha: float
  kernel_shapes: tuple           # ((in, out), ...) per target
  head_shapes: tuple             # (kernel shape, bias shape)

  normalizes_input = True
  layerwise_lr = True
  holds_frozen_base = True

  @property
  def num_classes(self):
    return self.fm.num_classes

  @property
  def input_size(self):
    return self.fm.input_size

  @property
  def resize_method(self):
    return self.fm.resize_method

  @property
  def scale(self) -> float:
    return float(self.alpha) / int(self.rank)

  def weight_decay_mask(self, params):
    return interface.decay_matrices(params)

  def lr_scales(self, params):
    return foundation.layer_decay_scales(params, int(self.fm.hf_config.num_hidden_layers),
                                         self.fm.layer_decay)

  def frozen_variables(self, dtype=None) -> dict:
    """The base backbone in the compute dtype (numpy), what state.frozen holds."""
    dtype = self.fm.dtype if dtype is None else dtype
    return jax.tree.map(lambda w: np.asarray(w, dtype), self.base.params)

  def _init_lora(self, rng):
    tree = {}
    for (path, (n_in, n_out)), key in zip(zip(self.targets, self.kernel_shapes),
                                          jax.random.split(rng, max(len(self.targets), 1))):
      a = jax.random.normal(key, (n_in, self.rank), jnp.float32) / np.sqrt(n_in)
      _set(tree, path.removesuffix("/kernel"), {"a": a, "b": jnp.zeros((self.rank, n_out))})
    return tree

  @nn.compact
  def __call__(self, images01, train: bool = False):
    lora = self.param("lora", self._init_lora)
    head = self.param("head", lambda _: {"kernel": jnp.zeros(self.head_shapes[0], jnp.float32),
                                         "bias": jnp.zeros(self.head_shapes[1], jnp.float32)})
    if self.is_initializing() and not self.has_variable("frozen", "backbone"):
      # init makes only the trained params; the base comes from config.fm.weights.
      backbone = jax.tree.map(lambda w: jnp.zeros(w.shape, self.fm.dtype), self.base.abstract)
    else:
      backbone = self.get_variable("frozen", "backbone")
    # Unmerged: x W + (alpha / r) (x A) B at each targeted Dense, added by intercepting the
    # base model's Dense calls, so W is never differentiated (no full-size weight gradient)
    # and the adapters' term stays in fp32 whatever the compute dtype.
    by_module = {("backbone", *t.split("/")[:-1]): _get(lora, t.removesuffix("/kernel"))
                 for t in self.targets}
    scale = self.scale

    def add_adapter(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      ab = by_module.get(tuple(context.module.path))
      if ab is None or context.method_name != "__call__" or not isinstance(
          context.module, nn.Dense):
        return out
      x = args[0].astype(jnp.float32)
      return (out.astype(jnp.float32) + scale * ((x @ ab["a"]) @ ab["b"])).astype(out.dtype)

    rngs = {"dropout": self.make_rng("dropout")} if train else {}
    with nn.intercept_methods(add_adapter):
      return self.fm.apply({"params": {"backbone": backbone, "head": head}}, images01,
                           train=train, rngs=rngs)


def merge_backbone(backbone, lora, targets, scale: float):
  """backbone with each target kernel W replaced by W + scale * A B (in W's dtype; the sum in
  float32)."""
  out = jax.tree.map(lambda w: w, backbone)  # a new tree, same leaves
  for path in targets:
    w = _get(backbone, path)
    ab = _get(lora, path.removesuffix("/kernel"))
    delta = scale * (ab["a"].astype(jnp.float32) @ ab["b"].astype(jnp.float32))
    _set(out, path, (w.astype(jnp.float32) + delta).astype(w.dtype))
  return out


def merged_params(model: LoraFoundationModel, params, frozen) -> dict:
  """The plain FoundationModel's params {'backbone', 'head'}: W + (alpha / r) A B (export)."""
  return {"backbone": merge_backbone(frozen["backbone"], params["lora"], model.targets,
                                     model.scale),
          "head": params["head"]}


def build(fm_cfg, finetune_cfg, num_classes: int, dtype: str = "auto") -> LoraFoundationModel:
  """The LoRA model of config.fm and config.finetune (its base read lazily from the weights)."""
  check_finetune(finetune_cfg)
  fm = foundation.build(fm_cfg, num_classes, dtype)
  dummy = jnp.zeros((1, fm.input_size, fm.input_size, 3), jnp.float32)
  abstract = jax.eval_shape(lambda: fm.init(jax.random.key(0), dummy))["params"]
  targets = select_targets(abstract["backbone"], finetune_cfg.lora_targets)
  shapes = tuple(tuple(_get(abstract["backbone"], p).shape) for p in targets)
  head = (tuple(abstract["head"]["kernel"].shape), tuple(abstract["head"]["bias"].shape))
  base = FrozenBase(lambda: foundation.pretrained_backbone(fm_cfg, fm), abstract["backbone"])
  return LoraFoundationModel(fm=fm, base=base, targets=targets, rank=int(finetune_cfg.lora_rank),
                             alpha=float(finetune_cfg.lora_alpha), kernel_shapes=shapes,
                             head_shapes=head)


def is_lora(model) -> bool:
  return bool(getattr(model, "holds_frozen_base", False))


def trainable_count(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def merged_model_state(model: LoraFoundationModel, state, mesh):
  """(the plain FoundationModel, a state with its merged params): a LoRA run served as an
  ordinary fine-tuned FM (mode=predict, mode=blur)."""
  from cellvit_jax.engine import steps  # engine imports models: imported here, not at the top
  from cellvit_jax import parallel
  params = merged_params(model, state.params, state.frozen)
  merged = steps.TrainState(step=state.step, apply_fn=model.fm.apply, params=params, tx=None,
                            opt_state=None, batch_stats={})
  return model.fm, parallel.replicate(merged, mesh)
