r"""Decoding throughput of the PyTorch reference itself, for comparison with `python -m kforcing_jax.bench`.

Runs the reference's own decoders unmodified on random paper-size weights (12 x 768, vocab 30522, float32):
`generate_ar_cached` as in its `batch_inference_with_prefix.py` (copied below: that file needs the tokenizer
download at import) and `MTP.sample_next_k_tokens_with_kv_caches` for K = 4 with and without its frequency
penalty. Timing includes the prefill (as the reference's script measures it); median of --repeats after a warm-up.

The reference is not a dependency: pass a checkout of github.com/alibaba-damo-academy/K-Forcing. Its models import
flash-attn, which has no CPU build, so this script installs a plain-torch stand-in for the two functions they call
(varlen packed attention through SDPA, rotate-half RoPE) before importing them.

  git clone https://github.com/alibaba-damo-academy/K-Forcing /tmp/K-Forcing
  pip install torch omegaconf loguru einops
  python -m benchmarks.reference_decoding --reference_dir /tmp/K-Forcing [--batches 1,8,32]
"""
import os
import statistics
import sys
import time
import types

import numpy as np
from absl import app, flags

flags.DEFINE_string("reference_dir", None, "a checkout of the K-Forcing PyTorch reference", required=True)
flags.DEFINE_list("batches", ["1", "8", "32"], "batch sizes")
flags.DEFINE_integer("num_tokens", 122, "new tokens per row")
flags.DEFINE_integer("prompt_len", 6, "prompt tokens per row")
flags.DEFINE_integer("repeats", 3, "timed repeats (median reported)")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


def _install_flash_attn_stand_in(torch):
  f = torch.nn.functional

  def varlen_qkvpacked(qkv, cu_seqlens, max_seqlen, dropout_p=0.0, softmax_scale=None, causal=False, **unused):
    outs, bounds = [], cu_seqlens.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
      q, k, v = (qkv[a:b, i].transpose(0, 1)[None] for i in range(3))
      outs.append(f.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=softmax_scale)[0].transpose(0, 1))
    return torch.cat(outs, 0)

  def rotate(x, cos, sin):
    half = cos.shape[-1]
    x1, x2 = x[..., :half], x[..., half: 2 * half]
    c, s = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c, x[..., 2 * half:]], -1)

  def rotary_qkv_(qkv, cos, sin, cos_k=None, sin_k=None, interleaved=False, seqlen_offsets=0, num_heads_q=None):
    assert not interleaved and seqlen_offsets == 0 and num_heads_q is None
    qkv[:, :, 0] = rotate(qkv[:, :, 0], cos, sin)
    qkv[:, :, 1] = rotate(qkv[:, :, 1], cos if cos_k is None else cos_k, sin if sin_k is None else sin_k)
    return qkv

  pkg, iface = types.ModuleType("flash_attn"), types.ModuleType("flash_attn.flash_attn_interface")
  layers, rotary = types.ModuleType("flash_attn.layers"), types.ModuleType("flash_attn.layers.rotary")
  iface.flash_attn_varlen_qkvpacked_func = varlen_qkvpacked
  rotary.apply_rotary_emb_qkv_ = rotary_qkv_
  pkg.flash_attn_interface, pkg.layers, layers.rotary = iface, layers, rotary
  sys.modules.update({"flash_attn": pkg, "flash_attn.flash_attn_interface": iface, "flash_attn.layers": layers,
                      "flash_attn.layers.rotary": rotary})


def _randomise(torch, model, scale=0.3):
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_((1.0 if name.endswith("weight") else 0.0) + scale * torch.randn_like(p))
      else:
        p.copy_(torch.randn_like(p) * (scale if "embedding" in name else 1.0 / np.sqrt(p.shape[1])))
  return model.eval()


def main(argv):
  del argv
  ref = os.path.abspath(FLAGS.reference_dir)
  if not os.path.exists(os.path.join(ref, "models", "pflm.py")):
    print(f"error: {ref} is not a K-Forcing checkout (no models/pflm.py)", file=sys.stderr)
    sys.exit(2)
  import omegaconf
  import torch
  from loguru import logger
  logger.remove()  # the reference logs every call
  _install_flash_attn_stand_in(torch)
  sys.path.insert(0, ref)
  from models import pflm as pflm_module  # noqa: E402
  from models.autoregressive import AR  # noqa: E402
  pflm_module.tqdm = lambda it, **kw: it  # its step loop draws a progress bar

  @torch.no_grad()
  def generate_ar_cached(model, prompt_ids, max_new_tokens):  # batch_inference_with_prefix.py, verbatim logic
    def sample(logits):
      probs = logits.exp()
      return torch.multinomial(probs / probs.sum(dim=-1, keepdim=True), num_samples=1)
    generated = prompt_ids
    log_probs, kv = model.infer_next_token(prompt_ids, kv_caches=None, offset=0, temperature=1.0)
    cur = sample(log_probs[:, -1, :])
    generated = torch.cat([generated, cur], dim=1)
    for _ in range(max_new_tokens - 1):
      log_probs, kv = model.infer_next_token(cur, kv_caches=kv, offset=generated.shape[1] - 1, temperature=1.0)
      cur = sample(log_probs[:, -1, :])
      generated = torch.cat([generated, cur], dim=1)
    return generated

  torch.manual_seed(0)
  torch.set_num_threads(FLAGS.threads)
  cfg = omegaconf.OmegaConf.create({"model": {"hidden_size": 768, "n_heads": 12, "n_blocks": 12, "cond_dim": 1024,
                                              "dropout": 0.0, "causal": True, "scale_by_sigma": False}})
  ar = _randomise(torch, AR(cfg, vocab_size=30522, mask_index=103))
  mtp = _randomise(torch, pflm_module.MTP(cfg, vocab_size=30522, mask_index=103, max_k=4))
  n = FLAGS.num_tokens
  print(f"torch {torch.__version__}, {FLAGS.threads} threads, 12 x 768, V=30522, float32, {FLAGS.prompt_len}-token "
        f"prompts, {n} new tokens, prefill included")
  print("| batch | reference AR tok/s | reference K=4 tok/s (penalty 0.5) | K=4 (no penalty) | K=4 speed-up |")
  print("|---|---|---|---|---|")
  for b in [int(x) for x in FLAGS.batches]:
    prompt = torch.randint(1000, 30000, (b, FLAGS.prompt_len))
    tau = torch.ones(b)
    runs = {"ar": lambda: generate_ar_cached(ar, prompt, n),
            "k4": lambda: mtp.sample_next_k_tokens_with_kv_caches(prompt, tau, n, k=4, frequency_penalty=0.5),
            "k4_nopen": lambda: mtp.sample_next_k_tokens_with_kv_caches(prompt, tau, n, k=4, frequency_penalty=0.0)}
    rate = {}
    for name, fn in runs.items():
      fn()
      times = []
      for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
      rate[name] = b * n / statistics.median(times)
    print(f"| {b} | {rate['ar']:.1f} | {rate['k4']:.1f} | {rate['k4_nopen']:.1f} | {rate['k4'] / rate['ar']:.2f}x |",
          flush=True)


if __name__ == "__main__":
  app.run(main)
