"""Mesh and logical->mesh rules are config data; this is the one place that turns them into shardings.

Model code names axes logically ("batch", "embed", "heads", "mlp", "vocab", ...). A config holds
  config.mesh = [("data", -1), ("model", 1)]            # axis name, size (-1: all remaining devices)
  config.sharding_rules = [("batch", "data"), ("heads", "model"), ...]
and `shardings_for(abstract_tree, mesh, rules)` gives NamedShardings for any tree of logically boxed values.
"""
import contextlib
from typing import Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from kforcing_jax.training import mesh_presets

# Data parallel over "data", tensor parallel over "model" (heads, MLP and vocab split; embeddings replicated).
DEFAULT_MESH = (("data", -1), ("model", 1))
DEFAULT_RULES = (
    ("batch", "data"),
    ("length", None),
    ("window", None),
    ("embed", None),
    ("heads", "model"),
    ("head_dim", None),
    ("mlp", "model"),
    ("vocab", "model"),
    ("noise_feat", None),
)


def make_mesh(mesh_spec: Sequence = DEFAULT_MESH, devices: Optional[Sequence] = None) -> Mesh:
  """Builds a mesh (Auto axis types) from [(name, size)], one size may be -1.

  Args:
    mesh_spec: axis names and sizes; or a multislice (hybrid ICI/DCN) spec, [(name, ici size, dcn size)] or
      {"ici": [...], "dcn": [...]}, built by `mesh_presets.make_hybrid_mesh`.
    devices: devices to lay out (default: all global devices).
  Returns:
    A `jax.sharding.Mesh`.
  """
  if mesh_presets.is_hybrid(mesh_spec):
    return mesh_presets.make_hybrid_mesh(mesh_spec, devices)
  devices = list(jax.devices() if devices is None else devices)
  names = tuple(str(n) for n, _ in mesh_spec)
  resolved = mesh_presets.resolve_sizes([(str(n), int(s)) for n, s in mesh_spec], len(devices))
  sizes = [resolved[n] for n in names]
  if len(devices) == jax.device_count():
    return jax.make_mesh(tuple(sizes), names, axis_types=(AxisType.Auto,) * len(names), devices=devices)
  return Mesh(np.asarray(devices).reshape(sizes), names)


def rules_tuple(rules: Sequence = DEFAULT_RULES) -> tuple:
  """Normalises config rules (lists from ml-collections / JSON) into flax's tuple-of-pairs form."""
  out = []
  for logical, mesh_axes in rules:
    if isinstance(mesh_axes, list):
      mesh_axes = tuple(mesh_axes)
    out.append((str(logical), mesh_axes))
  return tuple(out)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """Context under which model code's logical constraints resolve against `mesh`."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules_tuple(rules)):
    yield


def shardings_for(abstract_tree, mesh: Mesh, rules: Sequence = DEFAULT_RULES):
  """NamedShardings for a tree of (possibly `LogicallyPartitioned`-boxed) values; unboxed leaves are replicated.

  Args:
    abstract_tree: e.g. `jax.eval_shape(model.init, ...)`.
    mesh: the mesh.
    rules: logical->mesh rules.
  Returns:
    A tree of `NamedSharding` with the structure of `nn.unbox(abstract_tree)`.
  """
  specs = nn.get_partition_spec(abstract_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules_tuple(rules))


def batch_sharding(mesh: Mesh, rules: Sequence = DEFAULT_RULES, ndim: int = 2) -> NamedSharding:
  """Sharding of a [batch, ...] input: the batch axis over whatever "batch" maps to."""
  batch_axes = dict(rules_tuple(rules)).get("batch")
  return NamedSharding(mesh, P(batch_axes, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
