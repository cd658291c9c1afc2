"""One process of the 2-process x 4-device contrastive loss check (``jax.distributed`` on
127.0.0.1, gloo): ``mp_contrastive.py PROCESS_ID PORT OUT.npz``. Each process holds 8 of the 16
pairs (2 per device); process 0 writes the loss and every gradient."""

import sys


def main():
  process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  import numpy as np
  from flax import nnx
  from jax.sharding import NamedSharding, PartitionSpec as P

  from bertjax import sharding
  from bertjax.objectives.contrastive import ContrastiveObjective
  from bertjax.params import leaf_name
  from contrastive_data import pairs as _pairs, tiny as _tiny

  mesh = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  pairs = _pairs()
  mine = {k: v[process_id * 8:(process_id + 1) * 8] for k, v in pairs.items()}
  with sharding.use_mesh(mesh):
    batch = sharding.global_batch(
        mine, {k: sharding.batch_sharding(mesh, v.ndim) for k, v in mine.items()})
    assert len(batch["anchor_ids"].sharding.device_set) == 8 and jax.process_count() == 2
    objective = ContrastiveObjective()
    graphdef, params = nnx.split(_tiny())

    def loss(params, batch):  # the batch an argument: it spans both processes
      return objective(nnx.merge(graphdef, params), batch, None, objective.totals(batch))[0]

    value, grads = jax.jit(jax.value_and_grad(loss), out_shardings=NamedSharding(mesh, P()))(
        params, batch)
  flat = jax.tree_util.tree_flatten_with_path(grads, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
  if process_id == 0:  # replicated: every process holds the whole value
    np.savez(out, loss=float(value), **{leaf_name(p): np.asarray(v.get_value()) for p, v in flat})
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
