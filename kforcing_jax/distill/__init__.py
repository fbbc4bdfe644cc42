"""Distillation: the inverse CDF / noise inversion, self-forcing targets and losses."""
