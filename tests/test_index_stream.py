"""Positions computed in bulk (cellvit_jax/data/index_stream.py) against grain's own index
stream, and the train loop's chunked resident steps against one host-fed step per call."""
import json

import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

from cellvit_jax.data import index_stream, on_device, pipeline
from cellvit_jax.engine import multistep


@pytest.mark.parametrize("n,seed", [(2, 5), (10, 3), (4096, 0), (4097, 2 ** 32 - 1),
                                    (70_001, 9)])
def test_epoch_permutation_is_graines_index_shuffle(n, seed):
  got = index_stream.epoch_permutation(n, seed)
  idx = range(0, n, max(1, n // 3000))  # grain's C++ shuffle, one call per position
  want = [index_shuffle_module.index_shuffle(i, max_index=n - 1, seed=seed, rounds=4) for i in idx]
  np.testing.assert_array_equal(got[list(idx)], want)
  assert sorted(got.tolist()) == list(range(n))  # a permutation


@pytest.mark.parametrize("n,batch,seed,pi,pc", [(4096, 128, 0, 0, 1), (50, 8, 3, 1, 2),
                                                (10, 4, 7, 0, 1), (3, 2, 5, 0, 1),
                                                (1000, 48, 11, 2, 3)])
def test_index_batches_are_the_grain_stream_and_checkpoint_alike(n, batch, seed, pi, pc):
  kw = dict(global_batch=batch, seed=seed, process_index=pi, process_count=pc)
  grain_iter = iter(pipeline.train_index_dataset(n, **kw))
  fast = index_stream.IndexBatches(n, **kw)
  steps = max(8, 3 * n // batch + 3)  # three epochs and more: every epoch reshuffled alike
  want = np.stack([next(grain_iter)["index"] for _ in range(steps)])
  np.testing.assert_array_equal(fast.positions(0, steps), want)  # positions() does not move it
  assert fast.next_index == 0
  got = np.concatenate([fast.take(2), np.stack([next(fast)["index"] for _ in range(steps - 2)])])
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, want)
  # The bytes grain's checkpoint handler writes for its own iterator.
  assert fast.get_state() == json.dumps(grain_iter.get_state(), indent=4).encode()
  resumed = index_stream.IndexBatches(n, **kw)
  resumed.set_state(json.dumps({"next_index": 5}, indent=4).encode())
  np.testing.assert_array_equal(resumed.take(3), want[5:8])


def test_chunked_resident_steps_equal_host_fed_steps_bitwise():
  """StepRunner.run with resident data (positions from a device chunk picked by state.step, the
  rng folded inside the program), across two chunk boundaries, gives the bits of one host-fed
  step per call with the rng folded on the host."""
  import jax

  from cellvit_jax.engine import steps
  from test_multistep import tiny_vit_step
  model, mesh, tx, pure, jitted = tiny_vit_step()
  rng = np.random.default_rng(0)
  images, labels = rng.integers(0, 256, (40, 40, 40, 3), dtype=np.uint8), rng.integers(0, 4, 40)
  key = jax.random.key(1)
  out = []
  for fed in ("host", "chunk"):
    stream = index_stream.IndexBatches(len(images), global_batch=8, seed=3)
    state = steps.create_state(jax.random.key(0), model, tx, 40, mesh)
    losses = []
    if fed == "host":
      run = multistep.StepRunner(jitted, pure, mesh, 1)
      for s in range(5):
        i = next(stream)["index"]
        state, m = run(state, [{"image": images[i], "label": labels[i].astype(np.int32)}], key, s)
        losses += m
    else:
      run = multistep.StepRunner(jitted, pure, mesh, 1, on_device.place(images, labels, mesh),
                                 chunk_steps=2)
      for s, n in [(0, 1), (1, 3), (4, 1)]:
        state, m = run.run(state, stream, n, key, s)
        losses += m
      assert stream.next_index == 5
      with pytest.raises(ValueError, match="index stream is at batch 5"):
        run.run(state, stream, 1, key, 4)
    out.append(([float(x["loss"]) for x in losses],
                jax.tree.leaves(jax.device_get((state.params, state.opt_state)))))
  (host_losses, host_leaves), (chunk_losses, chunk_leaves) = out
  assert host_losses == chunk_losses
  assert all(np.array_equal(a, b) for a, b in zip(host_leaves, chunk_leaves))
