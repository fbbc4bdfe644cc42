"""The contract every `python -m kforcing_jax.<tool>` entry point keeps (train, sample, evaluate, bench, convert, demo).

  * Every flag is parsed and checked before any model is loaded; outputs are checked writable before the work
    (`kforcing_jax.files`), and an existing user file is never overwritten.
  * Bad input is one `error: ...` line on stderr and exit status 2 (`fail`); a diverged training run exits 1.
  * Quiet by default: absl / orbax / JAX logging at WARNING (`--verbosity=0` shows INFO, 1 DEBUG); the notices
    that matter (resumed at step N, fell back from step N, nothing to do) are one plain stderr line each.
"""
import os
import sys
from typing import Callable, Optional, Sequence

from absl import app, flags, logging

_QUIET = -1  # absl's verbosity for WARNING


def fail(err, status: int = 2) -> None:
  """Prints `error: <first line>` to stderr and exits (status 2: bad input)."""
  msg = str(err).strip() or type(err).__name__
  if isinstance(err, BaseException) and type(err).__name__ in msg.split(":")[0]:
    msg = msg.split(":", 1)[1].strip()
  print(f"error: {msg.splitlines()[0]}", file=sys.stderr)
  sys.exit(status)


def _config_path(argv: Sequence[str], name: str) -> Optional[str]:
  for i, a in enumerate(argv):
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
  return None


def parse_flags(argv, required: Sequence[str] = (), config_flag: Optional[str] = None):
  """absl flag parsing for `app.run(..., flags_parser=...)`: any flag error is one line naming the flag, exit 2.

  Args:
    argv: the command line.
    required: flags that must be given.
    config_flag: the name of an ml_collections config-file flag, whose file is checked to exist first.
  Returns:
    The positional arguments left.
  """
  if config_flag:
    path = _config_path(argv, config_flag)
    if path is not None and not os.path.isfile(path.split(":", 1)[0]):
      fail(f"--{config_flag}: no such config file: {path.split(':', 1)[0]}")
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # absl and ml_collections raise several types for bad flags / overrides / config files
    msg = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections' answer to --config.<unknown key>=...
      key = msg.strip("'\"").split("'")[0].split("\\n")[0]
      msg = f"unknown config key {key!r} (the config is locked; see the config file for its fields)"
    fail(msg.replace("ValueError: ", ""))
  if len(rest) > 1:
    fail(f"unexpected arguments {rest[1:]}")
  missing = [f"--{r}" for r in required if getattr(flags.FLAGS, r) is None]
  if missing:
    fail(f"{', '.join(missing)} required")
  if flags.FLAGS["verbosity"].present:
    logging.set_verbosity(flags.FLAGS.verbosity)
  return rest


def run(main: Callable, argv=None, required: Sequence[str] = (), config_flag: Optional[str] = None,
        errors: tuple = (ValueError, OSError)) -> None:
  """Runs `main(argv)` under absl with the contract above.

  Args:
    main: the entry point's main.
    argv: the command line (default: sys.argv).
    required: flags that must be given.
    config_flag: see `parse_flags`.
    errors: exception types that mean bad input (one line, exit 2).
  """
  flags.FLAGS.set_default("verbosity", _QUIET)  # before parsing, so an explicit --verbosity wins
  logging.set_verbosity(_QUIET)

  def guarded(args):
    try:
      main(args)
    except errors as e:
      fail(e)

  parse = lambda a: parse_flags(a, required, config_flag)
  app.run(guarded, argv=list(sys.argv if argv is None else argv), flags_parser=parse)


def int_list(values: Sequence[str], flag: str, minimum: int = 1) -> list[int]:
  """Integers of a list flag (e.g. --ks 1,2,4), each >= minimum; the error names the flag."""
  out = []
  for v in values:
    try:
      out.append(int(str(v).strip()))
    except ValueError:
      raise ValueError(f"--{flag}: {v!r} is not an integer") from None
  if not out:
    raise ValueError(f"--{flag} is empty")
  if min(out) < minimum:
    raise ValueError(f"--{flag} values must be >= {minimum}, got {out}")
  return out


def at_least(value: Optional[int], flag: str, minimum: int = 1) -> None:
  """Raises ValueError naming the flag unless value is None or >= minimum."""
  if value is not None and value < minimum:
    raise ValueError(f"--{flag} must be >= {minimum}, got {value}")
