"""Writing user-visible files: atomically, never over an existing file, into a folder checked writable first.

Local paths and object stores (gs://, through etils.epath) alike. Every entry point checks its outputs with
`check_new_file` / `check_output_dir` before it loads a model, so a bad `--out` costs nothing, and writes them
with `write_text` / `write_json`, so a crash never leaves a half-written file under the final name.
"""
import json
import os
import tempfile
from typing import Any, Iterable

from etils import epath


def _is_remote(path: str) -> bool:
  return "://" in str(path)


def check_new_file(path: str, what: str = "--out") -> None:
  """Raises ValueError unless `path` does not exist yet and its folder exists and is writable.

  Args:
    path: the output file.
    what: how the message names it (a flag name).
  """
  p = epath.Path(path)
  if p.exists():
    raise ValueError(f"{what} {path} exists; refusing to overwrite it (choose another path)")
  _check_writable_folder(str(p.parent) if str(p.parent) else ".", what)


def check_output_dir(folder: str, names: Iterable[str] = (), what: str = "--out") -> None:
  """Raises ValueError unless `folder` is (or can be created as) a writable folder without any of `names`.

  Args:
    folder: the output folder (created later by the writer if missing).
    names: files the run will write there; any that exists is refused (never overwritten).
    what: how the message names it.
  """
  p = epath.Path(folder)
  if p.exists() and not p.is_dir():
    raise ValueError(f"{what} {folder} is a file, not a folder")
  existing = [n for n in names if (p / n).exists()]
  if existing:
    raise ValueError(f"{what} {folder} already holds {', '.join(existing)}; refusing to overwrite (choose another "
                     f"{what})")
  parent = p
  while not parent.exists() and str(parent.parent) != str(parent):
    parent = parent.parent
  _check_writable_folder(str(parent), what)


def _check_writable_folder(folder: str, what: str) -> None:
  if _is_remote(folder):
    return  # object stores have no folders to check; a permission error surfaces at the write
  if not os.path.isdir(folder):
    raise ValueError(f"{what}: folder {folder} does not exist")
  if not os.access(folder, os.W_OK | os.X_OK):
    raise ValueError(f"{what}: folder {folder} is not writable")


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (a temporary file in the same folder, then a rename)."""
  if _is_remote(path):
    epath.Path(path).write_text(text)  # object-store writes are all-or-nothing already
    return
  folder = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj: Any, indent: int = 1) -> None:
  """`write_text` of `obj` as JSON (UTF-8, not ASCII-escaped)."""
  write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False))
