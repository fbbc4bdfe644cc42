"""Tiny saved workdirs (checkpoint + bytes tokenizer) for the API / CLI / evaluation / notebook tests."""
import jax

from helpers import random_params, tiny_config
from kforcing_jax.data.tokenizers import BytesTokenizer
from kforcing_jax import workdir

TEXTS = ["In the beginning God created the heaven and the earth.",
         "And the earth was without form, and void; and darkness was upon the face of the deep.",
         "And God said, Let there be light: and there was light."] * 4


def make_workdir(path, k_max: int, seed: int = 0, seq_len: int = 40, tokenizer=None, max_len: int = 64, **cfg_kw):
  """Writes a random-weight model (default: bytes tokenizer, vocab 384) as a trainer-like workdir; returns its path."""
  tok = tokenizer or BytesTokenizer()
  cfg = tiny_config(vocab_size=tok.vocab_size, k_max=k_max, max_len=max_len, **cfg_kw)
  params = random_params(cfg, seed)[1]["params"]
  meta = {"model": cfg.to_dict(), "tokenizer": tok.spec, "stage": "pflm" if k_max else "ar", "k": k_max, "step": 1,
          "config": {"seq_len": seq_len, "data": {"name": "kjv", "tokenizer": "bytes"}}}
  workdir.write_new(str(path), jax.device_get(params), meta, tok, step=1)
  return str(path)
