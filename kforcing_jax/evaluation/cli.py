"""Flag parsing shared by the sample / evaluate / bench / demo entry points: any flag error is one line + exit 2."""
import sys
from typing import Sequence

from absl import flags


def fail(err: BaseException) -> None:
  """Prints `error: <first line>` to stderr and exits with status 2 (bad input)."""
  print(f"error: {err}".splitlines()[0], file=sys.stderr)
  sys.exit(2)


def parse_flags(argv, required: Sequence[str] = ()):
  """absl flag parsing for `app.run(..., flags_parser=...)`; unknown / malformed / missing flags exit 2."""
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # absl raises several types for bad flags
    print(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[-1]}", file=sys.stderr)
    sys.exit(2)
  missing = [f"--{r}" for r in required if getattr(flags.FLAGS, r) is None]
  if missing:
    print(f"error: {', '.join(missing)} required", file=sys.stderr)
    sys.exit(2)
  return rest
