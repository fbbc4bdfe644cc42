"""Which Pallas lowering to use, and the per-backend `pallas_call` arguments shared by the kernels.

On TPU the kernels lower through Mosaic, on GPU through Triton, and on CPU they run with `interpret=True`. CPU is
for tests only: interpret mode is correct but roughly 10x slower than XLA, which is why `split` stays the CPU
default. Inside `pltpu.force_tpu_interpret_mode()` every `pallas_call` is interpreted with TPU semantics whatever
we pass, so tests can exercise the TPU path on CPU.
"""
import jax
import numpy as np
from jax.experimental.pallas import tpu as pltpu

SUPPORTED_BACKENDS = ("cpu", "gpu", "tpu")


def current() -> str:
  """The backend the kernels will target; raises ValueError for one without a Pallas lowering.

  Returns:
    "cpu" | "gpu" | "tpu".
  """
  name = jax.default_backend()
  if name == "cuda" or name == "rocm":
    name = "gpu"
  if name not in SUPPORTED_BACKENDS:
    raise ValueError(f"pallas kernels support backends {SUPPORTED_BACKENDS}, not {name!r}; "
                     f"use attention_impl='split'")
  return name


def call_kwargs(name: str, num_grid_axes: int) -> dict:
  """Extra `pl.pallas_call` arguments for a backend (all grid axes are independent in our kernels).

  Args:
    name: a backend from `current()`.
    num_grid_axes: rank of the kernel's grid.
  Returns:
    Keyword arguments: `interpret` on CPU, compiler params on TPU/GPU.
  """
  if name == "cpu":
    return {"interpret": True}
  if name == "tpu":
    return {"compiler_params": pltpu.CompilerParams(dimension_semantics=("parallel",) * num_grid_axes)}
  from jax.experimental.pallas import triton as pltriton  # only importable pieces needed on GPU
  return {"compiler_params": pltriton.CompilerParams(num_warps=4, num_stages=2)}


def row_multiple(name: str) -> int:
  """Smallest tile height a matmul operand may have on the backend (Triton dots need >= 16 rows)."""
  return 16 if name == "gpu" else 8


def per_batch_and_head_shard(fn, ranks, out_ranks):
  """Wraps `fn` so that, under an active mesh, it runs on each device's (batch, heads) shard via shard_map.

  A `pallas_call` is opaque to XLA's partitioner, which would otherwise gather its operands and run the whole
  batch on every device. Our kernels are independent per (batch row, head), so running them per shard is exact.
  Arguments are laid out [B, ..., H, D] (batch first, heads second to last) unless their entry in `ranks` names
  the heads axis; axes other than batch and heads are never split here, whatever the logical rules say.
  Scalars-per-row arguments (rank 1 or 2) are split on batch only.

  Args:
    fn: the kernel wrapper, positional array arguments (None allowed).
    ranks: rank of each positional argument (0 for a None argument), or (rank, heads axis) for an argument whose
      heads axis is not the second to last (the heads-major KV cache [B, H, S, D] is (4, 1)).
    out_ranks: ranks of the outputs (a tuple; a single output if an int).
  Returns:
    `fn` itself when no mesh (or a one-device mesh) is active, else its shard_map.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn
  import flax.linen as nn  # the logical axis rules live in flax's context
  from jax.sharding import PartitionSpec as P
  batch_axes, head_axes = nn.logical_to_mesh_axes(("batch", "heads"))

  def spec(rank):
    rank, head = rank if isinstance(rank, tuple) else (rank, rank - 2)
    if rank == 0:
      return None
    if rank <= 2:
      return P(batch_axes, *([None] * (rank - 1)))
    return P(*[batch_axes if i == 0 else head_axes if i == head else None for i in range(rank)])

  def axis_size(axes):
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))

  def wrapped(*args):
    for a, r in zip(args, ranks):
      head = r[1] if isinstance(r, tuple) else -2
      if a is not None and a.ndim >= 3 and (a.shape[0] % axis_size(batch_axes) or a.shape[head] % axis_size(head_axes)):
        raise ValueError(f"pallas kernels shard batch over {batch_axes} and heads over {head_axes}; shape {a.shape} "
                         f"does not divide mesh {dict(mesh.shape)}")
    outs = out_ranks if isinstance(out_ranks, tuple) else (out_ranks,)
    out_specs = tuple(spec(r) for r in outs) if isinstance(out_ranks, tuple) else spec(out_ranks)
    return jax.shard_map(fn, in_specs=tuple(spec(r) for r in ranks), out_specs=out_specs, check_vma=False)(*args)

  return wrapped
