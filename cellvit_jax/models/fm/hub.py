"""config.fm.weights=owner/name[@revision]: FM weights fetched from the Hugging Face hub.

Downloads go through huggingface_hub (a transformers dependency) into its standard cache
($HF_HOME/hub, or $HF_HUB_CACHE), so a model fetched by transformers or timm elsewhere is
not fetched again.  Only what we read is fetched: config.json, then model.safetensors,
else flax_model.msgpack, else pytorch_model.bin.  The usual huggingface_hub environment
applies: HF_TOKEN for gated repos (UNI, UNI2-h, Virchow2, H-optimus-0, Prov-GigaPath),
HF_HUB_OFFLINE=1 to use the cache only, HF_ENDPOINT for a mirror.

A repo that ships only pytorch_model.bin (a PyTorch pickle: reading it needs torch) is
converted once to config.json + model.safetensors (timm state dicts through
models/fm/convert.py, transformers ones with their names kept) under
$HF_HOME/cellvit_jax/converted/<content hash>/, keyed by the file's hash (the cache blob's
name, which the hub sets to the file's sha256 for large files), so a new revision
converts again and an old one never does.  A timm model.safetensors needs no cache: it
is converted in memory on load, as a local directory is.
"""
import functools
import hashlib
import json
import os
import re

from cellvit_jax.models.fm import convert
from cellvit_jax.models.fm import presets as fm_presets

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(@[A-Za-z0-9_./-]+)?$")
WEIGHT_FILES = ("model.safetensors", "flax_model.msgpack", "pytorch_model.bin")


def is_hub_id(weights: str) -> bool:
  """owner/name[@rev] that is not an existing local path (a local directory always wins)."""
  return (bool(HUB_ID.match(weights)) and not weights.startswith((".", "~"))
          and not os.path.exists(os.path.expanduser(weights)))


def _status(error) -> int:
  """The HTTP status behind a huggingface_hub error (it wraps some in a LocalEntryNotFound)."""
  while error is not None:
    response = getattr(error, "response", None)
    if response is not None and getattr(response, "status_code", None):
      return int(response.status_code)
    error = error.__cause__
  return 0


def _converted_dir(weights: str, bin_path: str, config_path: str) -> str:
  """pytorch_model.bin -> a cached config.json + model.safetensors directory (needs torch once)."""
  from huggingface_hub import constants
  real = os.path.realpath(bin_path)
  key = os.path.basename(real)  # the blob name: the file's sha256 (LFS) or git hash
  if not re.fullmatch(r"[0-9a-f]{40,64}", key):
    h = hashlib.sha256()
    with open(real, "rb") as f:
      for block in iter(lambda: f.read(1 << 23), b""):
        h.update(block)
    key = h.hexdigest()
  out = os.path.join(constants.HF_HOME, "cellvit_jax", "converted", key)
  if os.path.isfile(os.path.join(out, "config.json")):
    return out
  try:
    import torch  # noqa: F401  (only to say what is missing before reading)
  except ImportError:
    raise ValueError(f"config.fm.weights={weights!r} ships only pytorch_model.bin, a PyTorch "
                     "pickle: converting it once needs torch (pip install 'cellvit_jax[parity]' "
                     f"or a CPU torch); the result is cached in {os.path.dirname(out)}") from None
  with open(config_path) as f:
    raw = json.load(f)
  state = convert.read_state_dict(real)
  if "model_type" in raw:  # a transformers checkpoint: same names, safetensors format
    config, tensors = raw, state
  else:
    heads = int(raw.get("model_args", {}).get("num_heads", 0) or 0)
    config, tensors = convert.timm_to_dinov2(state, heads, repr(bin_path))
  convert.write_hf_dir(out, config, tensors)  # each file atomically; config.json last
  return out


@functools.lru_cache(maxsize=16)
def resolve(weights: str, preset_name: str = "") -> str:
  """The local directory holding `weights` (a hub id), downloading what is not cached."""
  from huggingface_hub import constants, hf_hub_download
  from huggingface_hub import errors as hub_errors
  repo, _, revision = weights.partition("@")
  revision = revision or None
  page = f"{constants.ENDPOINT}/{repo}"
  offline = constants.HF_HUB_OFFLINE
  where = f"config.fm.weights={weights!r}"

  def fail(error):
    status = _status(error)
    if isinstance(error, hub_errors.GatedRepoError) or status == 403 or (
        status == 401 and not isinstance(error, hub_errors.RepositoryNotFoundError)):
      return ValueError(f"{where}: the hub refused access (HTTP {status or 'gated'}); accept the "
                        f"licence on {page} with your account, then set HF_TOKEN=<a read token "
                        f"from {constants.ENDPOINT}/settings/tokens>")
    if isinstance(error, hub_errors.RevisionNotFoundError):
      return ValueError(f"{where}: revision {revision!r} does not exist in {repo}; use a branch, "
                        f"tag or commit listed on {page}")
    if isinstance(error, hub_errors.RepositoryNotFoundError):
      return ValueError(f"{where}: no such model repo on {constants.ENDPOINT}, or it is private "
                        f"(then set HF_TOKEN); check the id{_preset_hint(preset_name)} or pass a "
                        "local directory")
    if offline:
      return FileNotFoundError(f"{where} is not in the Hugging Face cache "
                               f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids "
                               "downloading; run once online (or unset HF_HUB_OFFLINE)")
    return OSError(f"{where}: could not reach {constants.ENDPOINT} and nothing is cached "
                   f"({' '.join(str(error).split())[:200]}); check the connection, or set "
                   "HF_HUB_OFFLINE=1 to use the cache only")

  def fetch(filename):
    return hf_hub_download(repo, filename, revision=revision)

  try:
    config = fetch("config.json")
    path = None
    for name in WEIGHT_FILES:
      try:
        path = fetch(name)
        break
      except hub_errors.LocalEntryNotFoundError:
        continue  # offline and not cached, or unreachable: try the next file in the cache
      except hub_errors.EntryNotFoundError:
        continue  # the repo does not ship it
  except (hub_errors.HfHubHTTPError, OSError, ValueError) as e:
    raise fail(e) from None
  if path is None:
    raise FileNotFoundError(f"{where}: {repo} has config.json but none of {', '.join(WEIGHT_FILES)}"
                            + (" in the cache (HF_HUB_OFFLINE=1)" if offline else "")
                            + "; it is not a model we can read")
  if path.endswith(".bin"):
    return _converted_dir(weights, path, config)
  if os.path.dirname(path) != os.path.dirname(config):  # never seen: one snapshot per commit
    raise ValueError(f"{where}: config.json and {os.path.basename(path)} resolved to different "
                     "revisions; pin one with @<commit>")
  return os.path.dirname(path)


def _preset_hint(preset_name: str) -> str:
  if preset_name not in fm_presets.PRESETS:
    return ""
  return f" (preset {preset_name} is {fm_presets.get(preset_name).hub_id})"
