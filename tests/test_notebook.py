"""notebooks/restore_and_sample.ipynb runs headless (nbclient) on tiny checkpoints made here."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from workdir_helpers import make_workdir

NOTEBOOK = os.path.join(os.path.dirname(__file__), "..", "notebooks", "restore_and_sample.ipynb")


def test_notebook_executes(tmp_path, monkeypatch):
  student = make_workdir(tmp_path / "k4", 4, 0, max_len=128)
  teacher = make_workdir(tmp_path / "ar", 0, 3, max_len=128)
  monkeypatch.setenv("KFORCING_WORKDIR", student)
  monkeypatch.setenv("KFORCING_TEACHER", teacher)
  monkeypatch.setenv("KFORCING_BENCH", str(tmp_path / "no_bench.json"))
  monkeypatch.setenv("XLA_FLAGS", "")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "verify == teacher AR sample: True" in text
  assert (tmp_path / "speedup.png").exists()
