"""config.fm.weights=owner/name[@revision] against a loopback hub (tests/hub_server.py):
public download into a temporary HF_HOME, a gated repo without and with HF_TOKEN, revision
pinning, HF_HUB_OFFLINE=1 on a warm and on a cold cache, a pytorch_model.bin-only repo
converted once and cached by its hash, and the command line end to end.  huggingface_hub
reads HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE when it is imported, so each case runs in a
fresh interpreter with its own environment; nothing leaves 127.0.0.1."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cellvit_jax.models.fm import tiny as fm_tiny
from conftest import REPO, as_flags
from hub_server import FakeHub, Repo
from test_foundation_modes import fm_overrides

TOKEN = "hf_loopback_token"
A, B = "a" * 40, "b" * 40  # two commits of one repo


def _files(directory):
  out = {}
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
  base = tmp_path_factory.mktemp("hub_src")
  v2_old = _files(fm_tiny.write_tiny("virchow2", str(base / "v2a"), seed=1))
  v2_new = _files(fm_tiny.write_tiny("virchow2", str(base / "v2b"), seed=2))
  phikon = _files(fm_tiny.write_tiny("phikon", str(base / "ph")))
  torch = pytest.importorskip("torch")
  from cellvit_jax.models.fm import weights as fm_weights
  state = fm_weights.read_safetensors(os.path.join(base / "v2a", "model.safetensors"))
  buf = io.BytesIO()
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, buf)
  bin_only = {"config.json": v2_old["config.json"], "pytorch_model.bin": buf.getvalue()}
  repos = {
      "owkin/phikon": Repo({A: phikon}, {"main": A}),
      "paige-ai/Virchow2": Repo({A: v2_old, B: v2_new}, {"main": B}, gated=True),
      "someone/virchow2-bin": Repo({A: bin_only}, {"main": A}),
  }
  with FakeHub(repos, TOKEN) as server:
    server.sources = {"old": str(base / "v2a"), "new": str(base / "v2b")}
    yield server


def _env(hub, home, **extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
  env.update({"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "PYTHONPATH": REPO,
              "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
              "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "10",
              "HF_HUB_DOWNLOAD_TIMEOUT": "10"})
  env.update(extra)
  return env


_RESOLVE = """
import json, os, sys
if os.environ.get("TEST_WITHOUT_TORCH"):
  sys.modules["torch"] = None  # import torch now raises ImportError, as without torch installed
from cellvit_jax.models.fm import presets as fm_presets, weights as fm_weights
for weights in sys.argv[2:]:
  try:
    ckpt = fm_weights.inspect(weights, fm_presets.get(sys.argv[1]))
    got = {"directory": ckpt.directory, "path": ckpt.path, "sha256": fm_weights.weights_hash(ckpt),
           "family": ckpt.family, "registers": ckpt.num_registers}
  except (ValueError, OSError) as e:
    got = {"error": str(e)}
  print(json.dumps(got))
"""


def _resolve_all(hub, home, weights, preset="virchow2", **env):
  """inspect() of each of `weights` in one fresh interpreter with this environment."""
  out = subprocess.run([sys.executable, "-c", _RESOLVE, preset, *weights], cwd=REPO,
                       env=_env(hub, home, **env), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  return [json.loads(line) for line in out.stdout.strip().splitlines()[-len(weights):]]


def _resolve(hub, home, weights, preset="virchow2", **env):
  return _resolve_all(hub, home, [weights], preset, **env)[0]


def _sha(path):
  import hashlib
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_public_download_lands_in_the_hf_cache(hub, tmp_path):
  got = _resolve(hub, tmp_path / "home", "owkin/phikon", preset="phikon")
  assert got["family"] == "vit"
  assert got["directory"] == str(
      tmp_path / "home" / "hub" / "models--owkin--phikon" / "snapshots" / A)
  assert ("HEAD", "/owkin/phikon/resolve/main/model.safetensors") in hub.requests


def test_gated_repo_without_token_is_one_line_and_with_token_downloads(hub, tmp_path):
  got = _resolve(hub, tmp_path / "home", "paige-ai/Virchow2")
  assert got["error"].startswith("config.fm.weights='paige-ai/Virchow2': the hub refused access "
                                 "(HTTP 401); accept the licence on "
                                 f"{hub.endpoint}/paige-ai/Virchow2 with your account, then set "
                                 "HF_TOKEN=")
  assert "\n" not in got["error"] and not (tmp_path / "home" / "hub" / "models--paige-ai--Virchow2"
                                           / "snapshots").exists()
  got = _resolve(hub, tmp_path / "home", "paige-ai/Virchow2", HF_TOKEN=TOKEN)
  assert got["directory"].endswith(os.path.join("snapshots", B)) and got["registers"] == 4
  assert got["sha256"] == _sha(os.path.join(hub.sources["new"], "model.safetensors"))


def test_revision_pinning_and_offline_warm_and_cold_cache(hub, tmp_path):
  home = tmp_path / "home"
  pinned, missing, latest = _resolve_all(
      hub, home, [f"paige-ai/Virchow2@{A}", "paige-ai/Virchow2@" + "c" * 40, "paige-ai/Virchow2"],
      HF_TOKEN=TOKEN)
  assert pinned["directory"].endswith(os.path.join("snapshots", A))
  assert pinned["sha256"] == _sha(os.path.join(hub.sources["old"], "model.safetensors"))
  assert "revision 'cccccccc" in missing["error"]
  assert "does not exist in paige-ai/Virchow2" in missing["error"]
  assert latest["directory"].endswith(os.path.join("snapshots", B))
  assert latest["sha256"] == _sha(os.path.join(hub.sources["new"], "model.safetensors"))
  # Offline: the warm cache answers (both revisions), without a single request.
  before = len(hub.requests)
  offline = _resolve_all(hub, home, [f"paige-ai/Virchow2@{A}", "paige-ai/Virchow2"],
                         HF_HUB_OFFLINE="1")
  for got, expected in zip(offline, (pinned, latest)):
    assert got["directory"] == expected["directory"] and got["sha256"] == expected["sha256"]
  assert len(hub.requests) == before
  # Offline on a cold cache: a clear error, still no request.
  cold = _resolve(hub, tmp_path / "cold", "paige-ai/Virchow2", HF_HUB_OFFLINE="1")
  assert cold["error"] == ("config.fm.weights='paige-ai/Virchow2' is not in the Hugging Face cache "
                           f"({tmp_path / 'cold' / 'hub'}) and HF_HUB_OFFLINE=1 forbids "
                           "downloading; run once online (or unset HF_HUB_OFFLINE)")
  assert len(hub.requests) == before


def test_pytorch_bin_only_repo_is_converted_once_and_cached_by_hash(hub, tmp_path):
  home = tmp_path / "home"
  no_torch = _resolve(hub, home, "someone/virchow2-bin", TEST_WITHOUT_TORCH="1")
  assert no_torch["error"].startswith("config.fm.weights='someone/virchow2-bin' ships only "
                                      "pytorch_model.bin, a PyTorch pickle: converting it once "
                                      "needs torch")
  assert not (home / "cellvit_jax").exists()
  got = _resolve(hub, home, "someone/virchow2-bin")
  assert got["directory"].startswith(str(home / "cellvit_jax" / "converted"))
  assert got["registers"] == 4
  blob = os.path.basename(got["directory"])
  assert os.path.isfile(home / "hub" / "models--someone--virchow2-bin" / "blobs" / blob)
  with open(os.path.join(got["directory"], "config.json")) as f:
    assert json.load(f)["model_type"] == "dinov2_with_registers"
  stamp = os.path.getmtime(got["path"])
  again = _resolve(hub, home, "someone/virchow2-bin", HF_HUB_OFFLINE="1")
  assert again == got and os.path.getmtime(got["path"]) == stamp  # not converted again


@pytest.mark.slow  # a full probe run (about a minute here); the resolution it uses is tested above
def test_probe_through_the_command_line_with_a_hub_id(hub, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  flags = as_flags(fm_overrides(tiny_data_dir, "paige-ai/Virchow2", str(tmp_path / "cache")))
  out = subprocess.run([sys.executable, "-m", "cellvit_jax.main",
                        "--config=configs/fm.py:virchow2,probe", f"--workdir={workdir}", *flags],
                       cwd=REPO, capture_output=True, text=True,
                       env=_env(hub, tmp_path / "home", HF_TOKEN=TOKEN), timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["finished"] and results["feature_dim"] == 64
  assert results["weights"]["sha256"] == _sha(os.path.join(hub.sources["new"], "model.safetensors"))
