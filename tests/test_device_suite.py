"""benchmarks/device_suite.py: a kernel that does not compile stops the suite with a named error.

The end-to-end smoke run (`DEVICE_SUITE_SMOKE=1 benchmarks/device_suite.sh`) takes about a CPU-minute, too long
for the test suite; docs/benchmarks.md records it.
"""
import pytest

from benchmarks import device_suite, kernels


def test_a_kernel_that_does_not_compile_stops_the_suite(monkeypatch):
  real = kernels.fwd_bwd

  def broken(impl, block_q, block_k):
    if impl == "pallas":
      def fail(*args):
        raise NotImplementedError("no lowering")
      return fail
    return real(impl, block_q, block_k)

  monkeypatch.setattr(kernels, "fwd_bwd", broken)
  with pytest.raises(device_suite.SuiteError, match="pallas attention .float32. failed to compile"):
    device_suite.attention_rows(device_suite.SMOKE["attn"], "float32", 1)
