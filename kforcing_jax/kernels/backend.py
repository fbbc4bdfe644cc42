"""Which Pallas lowering to use, and the per-backend `pallas_call` arguments shared by the kernels.

On TPU the kernels lower through Mosaic, on GPU through Triton, and on CPU they run with `interpret=True`. CPU is
for tests only: interpret mode is correct but roughly 10x slower than XLA, which is why `split` stays the CPU
default. Inside `pltpu.force_tpu_interpret_mode()` every `pallas_call` is interpreted with TPU semantics whatever
we pass, so tests can exercise the TPU path on CPU.
"""
import jax
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
