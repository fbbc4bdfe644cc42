"""No import runs back up the layers: entry points -> api / conversion -> training, decoding, evaluation ->
workdir -> distill, data -> models -> kernels (files: a leaf every layer may use). Imports inside functions count."""
import ast
import os

import pytest

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kforcing_jax")
# Higher imports lower (or its own level); never the other way.
LAYERS = {
    "files": 0, "kernels": 1, "models": 2, "distill": 3, "data": 3, "workdir": 4,
    "training": 5, "decoding": 5, "evaluation": 5, "demo_config": 5,
    "api": 6, "conversion": 6, "pretrained": 6,
    "cli": 7, "main_job": 7, "train": 7, "sample": 7, "evaluate": 7, "bench": 7, "convert": 7, "demo": 7,
    "__init__": 8,
}


def _modules():
  for root, _, names in os.walk(PKG):
    for n in names:
      if n.endswith(".py"):
        path = os.path.join(root, n)
        rel = os.path.relpath(path, PKG)[:-3].replace(os.sep, ".")
        yield rel, path


def _layer(module: str) -> int:
  top = module.split(".")[0]
  if top not in LAYERS:
    raise AssertionError(f"kforcing_jax.{module} is in no layer; add it to LAYERS in tests/test_imports.py")
  return LAYERS[top]


def _imports(path: str, module: str):
  tree = ast.parse(open(path, encoding="utf-8").read())
  package = module.rsplit(".", 1)[0] if "." in module else ""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("kforcing_jax."):
          yield a.name[len("kforcing_jax."):], node.lineno
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if package else ""
        target = ".".join(x for x in (base, node.module or "") if x)
      elif node.module and (node.module == "kforcing_jax" or node.module.startswith("kforcing_jax.")):
        target = node.module[len("kforcing_jax."):] if node.module != "kforcing_jax" else ""
      else:
        continue
      for a in node.names:
        yield (f"{target}.{a.name}" if target else a.name).strip("."), node.lineno


def violations(module: str, path: str) -> list[str]:
  """Every import of `module` (at `path`) that reaches a higher layer."""
  own = _layer(module)
  out = []
  for target, line in _imports(path, module):
    if target.split(".")[0] != module.split(".")[0] and _layer(target) > own:
      out.append(f"kforcing_jax/{module.replace('.', '/')}.py:{line} imports kforcing_jax.{target} "
                 f"(layer {_layer(target)}) from layer {own}")
  return out


MODULES = sorted(_modules())


@pytest.mark.parametrize("module, path", MODULES, ids=[m for m, _ in MODULES])
def test_no_import_runs_back_up(module, path):
  assert not violations(module, path)


def test_a_backwards_import_is_caught(tmp_path):
  # The kind this test exists for: models/torch_import.py once imported kforcing_jax.training.
  path = tmp_path / "mapping.py"
  path.write_text("def f():\n  from kforcing_jax.training import checkpoint\n  from ..workdir import restore\n")
  assert len(violations("models.mapping", str(path))) == 2
