"""Evaluation: fidelity and quality metrics (`metrics`), the throughput benchmark (`benchmark`), CLI helpers."""
