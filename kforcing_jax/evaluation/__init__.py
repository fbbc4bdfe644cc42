"""Evaluation: fidelity and quality metrics (`metrics`), one report against a teacher (`report`), the throughput
benchmark (`benchmark`)."""
