"""Parallelism strategies as config data (mesh spec + logical rules), hybrid ICI/DCN meshes, and launch checks.

A strategy is two pieces of config, consumed by `sharding.make_mesh` / `sharding.shardings_for`:
  mesh            [(axis, size)], one size may be -1; or, for multislice / multi-granule jobs, a hybrid spec:
                  [(axis, ici size, dcn size)]: the ici size is the axis inside one slice (fast interconnect), the
                  dcn size how many slices go along it (data-center network; usually only "data" has one > 1).
                  The same as a dict {"ici": [(axis, size)], "dcn": [(axis, size)]} (either form is accepted; the
                  list form fits the list-typed `config.mesh` field).
  sharding_rules  [(logical axis, mesh axis or axes or None)]
Every preset uses the same three axes, so presets mix freely and a size-1 axis costs nothing:
  data   pure data parallelism: batch split, parameters replicated.
  fsdp   batch split AND parameters (their "embed" dimension) split, gathered per layer by XLA (ZeRO-3).
  model  tensor parallelism: heads, MLP hidden and vocabulary split (Megatron); activations' embed dim replicated.
"""
from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "model")

# Rules list the model's logical names (models/layers.py, models/transformer.py). flax resolves a tensor's axes in
# rule order and never maps one mesh axis twice, so activations [batch, length, embed] take "fsdp" for the batch
# and leave embed replicated, while weights [embed, mlp] take "fsdp" for embed.
_COMMON = (("length", None), ("window", None), ("head_dim", None), ("noise_feat", None))
RULES = {
    "dp": (("batch", ("data", "fsdp")), ("embed", None), ("heads", None), ("mlp", None), ("vocab", None)) + _COMMON,
    "fsdp": (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", None), ("mlp", None), ("vocab", None))
            + _COMMON,
    "tp": (("batch", ("data", "fsdp")), ("embed", None), ("heads", "model"), ("mlp", "model"), ("vocab", "model"))
          + _COMMON,
    "fsdp_tp": (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("heads", "model"), ("mlp", "model"),
                ("vocab", "model")) + _COMMON,
}


def preset(strategy: str, model_parallel: int = 1, num_slices: int = 1) -> dict:
  """Mesh spec and rules for a strategy, as config data.

  Args:
    strategy: "dp", "fsdp", "tp" or "fsdp_tp".
    model_parallel: size of the "model" axis (tp / fsdp_tp; must divide the heads, MLP and vocab sizes).
    num_slices: TPU slices (or hosts/granules) joined over DCN; the data axis goes across them, so only
      gradients cross the slow network.
  Returns:
    {"mesh": spec, "sharding_rules": rules}: spec is [[axis, size]] for one slice, else [[axis, ici, dcn]].
  """
  if strategy not in RULES:
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {sorted(RULES)}")
  if model_parallel < 1 or num_slices < 1:
    raise ValueError(f"model_parallel={model_parallel} and num_slices={num_slices} must be >= 1")
  if strategy in ("dp", "fsdp") and model_parallel != 1:
    raise ValueError(f"strategy {strategy!r} has no model axis; model_parallel must be 1, got {model_parallel}")
  sizes = {"dp": (-1, 1, model_parallel), "fsdp": (1, -1, model_parallel), "tp": (-1, 1, model_parallel),
           "fsdp_tp": (1, -1, model_parallel)}[strategy]
  if num_slices == 1:
    mesh: Any = [[a, s] for a, s in zip(AXES, sizes)]
  else:
    mesh = [[a, s, num_slices if a == "data" else 1] for a, s in zip(AXES, sizes)]
  return {"mesh": mesh, "sharding_rules": [list(r) for r in RULES[strategy]]}


def is_hybrid(mesh_spec) -> bool:
  """Whether a mesh spec is hybrid: {"ici": ..., "dcn": ...} or [(axis, ici size, dcn size)]."""
  if hasattr(mesh_spec, "keys"):
    return "ici" in mesh_spec
  return any(len(entry) == 3 for entry in mesh_spec)


def split_hybrid(mesh_spec) -> tuple[list, dict]:
  """([(axis, ici size)], {axis: dcn size}) of a hybrid spec in either form."""
  if hasattr(mesh_spec, "keys"):
    return _pairs(mesh_spec["ici"]), dict(_pairs(mesh_spec.get("dcn", ())))
  if any(len(e) not in (2, 3) for e in mesh_spec):
    raise ValueError(f"mesh entries are (axis, size) or (axis, ici size, dcn size), got {list(mesh_spec)}")
  ici = [(str(e[0]), int(e[1])) for e in mesh_spec]
  return ici, {str(e[0]): int(e[2]) for e in mesh_spec if len(e) == 3}


def _pairs(spec) -> list:
  return [(str(n), int(s)) for n, s in spec]


def resolve_sizes(mesh_spec, num_devices: int, num_granules: int = 1) -> dict:
  """Axis sizes of a (flat or hybrid) mesh spec for `num_devices` devices in `num_granules` slices.

  Args:
    mesh_spec: [(axis, size)], or a hybrid spec (module docstring).
    num_devices: all devices.
    num_granules: slices (hybrid specs: must equal the product of the dcn sizes).
  Returns:
    {axis: size} of the full mesh (ici size x dcn size per axis).
  Raises:
    ValueError: the spec does not fit the devices (one line).
  """
  if is_hybrid(mesh_spec):
    ici, dcn = split_hybrid(mesh_spec)
    names = [n for n, _ in ici]
    if set(dcn) - set(names):
      raise ValueError(f"dcn axes {sorted(set(dcn) - set(names))} are not in the ici mesh {names}")
    if any(s < 1 for s in dcn.values()):
      raise ValueError(f"dcn sizes must be >= 1, got {dcn}")
    slices = int(np.prod(list(dcn.values()) or [1]))
    if slices != num_granules:
      raise ValueError(f"dcn mesh {dcn} spans {slices} slices but the job has {num_granules}")
    if num_devices % slices:
      raise ValueError(f"{num_devices} devices do not split into {slices} slices")
    per = _flat_sizes(ici, num_devices // slices)
    return {n: per[n] * dcn.get(n, 1) for n in names}
  return _flat_sizes(_pairs(mesh_spec), num_devices)


def _flat_sizes(spec: list, num_devices: int) -> dict:
  """{axis: size} of a flat [(axis, size)] mesh spec over num_devices (one -1 takes the rest); ValueError if not."""
  sizes = [s for _, s in spec]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {spec}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh sizes must be >= 1 or -1, got {spec}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if num_devices % known:
    raise ValueError(f"mesh {dict(spec)} does not divide {num_devices} devices")
  out = {n: (num_devices // known if s == -1 else s) for n, s in spec}
  if int(np.prod(list(out.values()))) != num_devices:
    raise ValueError(f"mesh {out} needs {int(np.prod(list(out.values())))} devices, have {num_devices}")
  return out


def batch_axes(rules: Sequence) -> tuple:
  """Mesh axes the "batch" logical axis maps to (the data-parallel axes)."""
  for logical, mesh_axes in rules:
    if logical == "batch":
      if mesh_axes is None:
        return ()
      return tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple)) else (mesh_axes,)
  return ()


def check_batch(global_batch: int, sizes: dict, rules: Sequence, num_processes: int = 1) -> None:
  """Raises ValueError unless the global batch splits evenly over the data axes and over the processes.

  Args:
    global_batch: the global batch size.
    sizes: {axis: size} (`resolve_sizes`).
    rules: logical rules ("batch" gives the data axes).
    num_processes: hosts feeding data; each loads global_batch // num_processes rows.
  """
  axes = batch_axes(rules)
  unknown = [a for a in axes if a not in sizes]
  if unknown:
    raise ValueError(f"rule batch -> {axes} names mesh axes {unknown} that the mesh {sizes} lacks")
  ways = int(np.prod([sizes[a] for a in axes] or [1]))
  if global_batch < 1 or global_batch % ways:
    raise ValueError(f"global batch {global_batch} is not divisible by the data axes {axes} (size {ways})")
  if global_batch % num_processes:
    raise ValueError(f"global batch {global_batch} is not divisible by the {num_processes} processes")


def _granules(devices: Sequence) -> list:
  """Devices grouped by slice (TPU multislice), else by process, keeping each group's device order."""
  key = (lambda d: d.slice_index) if hasattr(devices[0], "slice_index") else (lambda d: d.process_index)
  groups = {}
  for d in devices:
    groups.setdefault(key(d), []).append(d)
  return [groups[k] for k in sorted(groups)]


def make_hybrid_mesh(mesh_spec, devices: Optional[Sequence] = None) -> Mesh:
  """A mesh whose "dcn" part runs across slices (or processes) and whose "ici" part runs inside each.

  On TPU this is `mesh_utils.create_hybrid_device_mesh` (ICI-topology-aware device order inside each slice).
  Where devices carry no slice index (CPU, GPU), each process is a granule. A single process with a dcn size > 1
  splits its devices into that many contiguous groups, which lets tests exercise the layout on fake devices.

  Args:
    mesh_spec: a hybrid spec, [(axis, ici size, dcn size)] or {"ici": [(axis, size)], "dcn": [(axis, size)]}.
    devices: devices (default: all global devices).
  Returns:
    A `jax.sharding.Mesh` with Auto axis types.
  """
  devices = list(jax.devices() if devices is None else devices)
  ici, dcn_d = split_hybrid(mesh_spec)
  names = tuple(n for n, _ in ici)
  slices = int(np.prod(list(dcn_d.values()) or [1]))
  granules = _granules(devices)
  if len(granules) == 1 and slices > 1:
    granules = [list(g) for g in np.array_split(np.asarray(devices, dtype=object), slices)]
  sizes = resolve_sizes(mesh_spec, len(devices), len(granules))
  ici_shape = [sizes[n] // dcn_d.get(n, 1) for n in names]
  dcn_shape = [dcn_d.get(n, 1) for n in names]
  if hasattr(devices[0], "slice_index") and devices[0].platform == "tpu":
    arr = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
  else:
    # Same layout as create_hybrid_device_mesh: along each axis the dcn index is the outer (slow) one.
    per = np.stack([np.asarray(g, dtype=object).reshape(ici_shape) for g in granules])
    per = per.reshape(dcn_shape + ici_shape)
    nd = len(names)
    arr = per.transpose([j for i in range(nd) for j in (i, nd + i)]).reshape([sizes[n] for n in names])
  return Mesh(arr, names, axis_types=(AxisType.Auto,) * len(names))
