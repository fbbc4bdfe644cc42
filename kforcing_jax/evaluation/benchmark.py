"""Decoding throughput: AR vs push-forward (K = 1..4) vs verify, over batch sizes, prefill timed apart.

Every decoder runs as two jitted phases (`phases` in each decoder module): prefill (prompt into a fresh cache, first
token(s)) and the step loop. Both are compiled ahead of time and run once untimed (the warm-up); each repeat times a
fresh prefill and the loop separately with `block_until_ready`. Reported tokens/s = batch * num_tokens / median
loop time (prefill excluded; its median is reported apart, plus the end-to-end rate). All decoders share the
model's dtype and the heads-major [B, H, S, D] preallocated cache layout.

AR baselines (see `decoding.ar`): "vocab_cdf" (an exact sample at the cost of torch.multinomial; the baseline the
speed-up is quoted against), "icdf" (the sorted inverse CDF the fidelity/verify paths use; sort-free, a bisection of
masked sums over the vocabulary per token) and "greedy".
"""
import statistics
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kforcing_jax.decoding import common, dispatch
from kforcing_jax.models.config import SMOLLM2_135M, ModelConfig
from kforcing_jax.models.params import init_params

AR_BASELINE = "vocab_cdf"


def paper_size_config(k_max: int = 4, dtype: str = "float32") -> ModelConfig:
  """The reference's LM1B model: 12 layers x 768, 12 heads, MLP 3072, BERT vocab 30522, 128 positions."""
  return ModelConfig(vocab_size=30522, num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, max_len=128,
                     k_max=k_max, dtype=dtype, param_dtype=dtype)


def smollm2_size_config(k_max: int = 4, dtype: str = "float32") -> ModelConfig:
  """SmolLM2-135M's shape (llama preset, 30 x 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152, tied), 128
  positions like `paper_size_config` so the same sweep fits."""
  return ModelConfig(**SMOLLM2_135M, max_len=128, k_max=k_max, dtype=dtype, param_dtype=dtype)


def random_params(cfg: ModelConfig, seed: int = 0, head_scale: float = 0.05):
  """Initialised params with a random (not zero-initialised) head, so logits and the samplers do real work (a
  tied model's head is its embedding, random already)."""
  params = init_params(cfg, jax.random.key(seed))
  if "head" not in params:
    return params
  k1, k2 = jax.random.split(jax.random.key(seed + 1))
  head = dict(params["head"])
  head["kernel"] = head_scale * jax.random.normal(k1, head["kernel"].shape, head["kernel"].dtype)
  if "bias" in head:
    head["bias"] = 0.1 * jax.random.normal(k2, head["bias"].shape, head["bias"].dtype)
  return {**params, "head": head}


def _prompts(batch: int, prompt_len: int, vocab: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  tok = rng.integers(1, vocab, size=(batch, prompt_len)).astype(np.int32)
  padded, lens = common.pad_prompts(tok.tolist())
  return jnp.asarray(padded), jnp.asarray(lens)


def _timed(pre, pre_args, run, run_args, repeats: int):
  # Compile both phases ahead of time, warm up, then time fresh prefill + loop pairs.
  pre_c = pre.lower(*pre_args).compile()
  run_c = run.lower(*run_args(jax.block_until_ready(pre_c(*pre_args)))).compile()
  # One untimed run: the first execution of a compiled program pays one-off costs (allocation, thread-pool start).
  jax.block_until_ready(run_c(*run_args(jax.block_until_ready(pre_c(*pre_args)))))
  pre_t, loop_t, out = [], [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    state = jax.block_until_ready(pre_c(*pre_args))
    t1 = time.perf_counter()
    out = jax.block_until_ready(run_c(*run_args(state)))
    t2 = time.perf_counter()
    pre_t.append(t1 - t0)
    loop_t.append(t2 - t1)
  return statistics.median(pre_t), statistics.median(loop_t), out


def time_decoder(mode: str, cfg: ModelConfig, params, batch: int, *, num_tokens: int = 122, prompt_len: int = 6,
                 k: int = 0, sampler: str = AR_BASELINE, teacher: Optional[tuple] = None, repeats: int = 3,
                 unroll: int = 1, seed: int = 0, readout: str = "argmax") -> dict:
  """Times one decoder at one batch size.

  Args:
    mode: "ar" | "pflm" | "verify" | "speculative" (`decoding.dispatch`).
    cfg, params: the decoding model (the student in verify mode).
    batch: rows.
    num_tokens: new tokens per row.
    prompt_len: prompt tokens per row.
    k: tokens per step (pflm / verify).
    sampler: AR sampler.
    teacher: (cfg, params) of the AR teacher (verify / speculative mode).
    repeats: timed repeats after compilation (median reported).
    unroll: scan unroll.
    seed: noise / prompt seed.
    readout: pflm / verify readout.
  Returns:
    {"prefill_s", "loop_s", "tokens_per_s", "tokens_per_s_e2e", and "tokens_per_pass" with a teacher}.
  """
  tok, lens = _prompts(batch, prompt_len, cfg.vocab_size, seed)
  t_cfg, t_params = teacher if mode in dispatch.TEACHER_MODES else (None, None)
  ph = dispatch.phases(mode, cfg, num_tokens, k=k, teacher_cfg=t_cfg, readout=readout, sampler=sampler,
                       unroll=unroll)
  u = ph.noise(seed, batch, tok.shape[1])
  res = _timed(ph.prefill, ph.prefill_args(params, t_params, tok, lens, u, 1.0), ph.loop,
               lambda s: ph.loop_args(params, t_params, s, u, 1.0), repeats)
  pre_s, loop_s, out = res
  n = batch * num_tokens
  row = {"prefill_s": pre_s, "loop_s": loop_s, "tokens_per_s": n / loop_s, "tokens_per_s_e2e": n / (pre_s + loop_s)}
  if mode in dispatch.TEACHER_MODES:
    row["tokens_per_pass"] = float(num_tokens * batch / np.sum(np.asarray(out[1])))
  return row


def run(cfg: ModelConfig, params, batch_sizes: Sequence[int], ks: Sequence[int] = (1, 2, 3, 4), *,
        ar_samplers: Sequence[str] = (AR_BASELINE, "icdf", "greedy"), ar_model: Optional[tuple] = None,
        teacher: Optional[tuple] = None, verify_k: Optional[int] = None, num_tokens: int = 122, prompt_len: int = 6,
        repeats: int = 3, unroll: int = 1, progress: bool = True, speculative: bool = True,
        readout: str = "argmax") -> dict:
  """The full sweep: AR samplers, push-forward K, optional verify / speculative, for every batch size.

  Args:
    cfg, params: the push-forward model.
    batch_sizes: rows per call.
    ks: push-forward K values (each <= cfg.k_max).
    ar_samplers: AR variants to time.
    ar_model: (cfg, params) for AR (default: the push-forward model's own AR path, identical cost).
    teacher: (cfg, params) AR teacher for verify mode (None: no verify line).
    verify_k: drafts per verify / speculative pass (default: max(ks)).
    speculative: also time speculative decoding against `teacher` (both lossless modes by default).
    readout: the push-forward / verify readout ("argmax" | "sample").
    num_tokens, prompt_len, repeats, unroll: see `time_decoder`.
    progress: tqdm bar.
  Returns:
    {"config", "baseline", "settings", "results": {str(batch): {name: row}},
     "speedup": {str(batch): {name: x over the AR baseline}}}.
  """
  from tqdm.auto import tqdm

  a_cfg, a_params = ar_model or (cfg, params)
  jobs = [(f"ar_{s}", "ar", a_cfg, a_params, 0, s) for s in ar_samplers]
  jobs += [(f"k{k}", "pflm", cfg, params, k, None) for k in ks]
  if teacher is not None:
    vk = verify_k or max(ks)
    jobs.append((f"verify_k{vk}", "verify", cfg, params, vk, None))
    if speculative:
      jobs.append((f"speculative_k{vk}", "speculative", cfg, params, vk, None))
  results = {}
  bar = tqdm(total=len(jobs) * len(batch_sizes), desc="bench", disable=not progress)
  for b in batch_sizes:
    results[str(b)] = {}
    for name, mode, c, p, k, s in jobs:
      bar.set_postfix_str(f"B={b} {name}")
      results[str(b)][name] = time_decoder(mode, c, p, b, num_tokens=num_tokens, prompt_len=prompt_len, k=k,
                                      sampler=s or AR_BASELINE, teacher=teacher, repeats=repeats, unroll=unroll,
                                      readout=readout)
      bar.update()
  bar.close()
  base = f"ar_{AR_BASELINE}" if AR_BASELINE in ar_samplers else f"ar_{ar_samplers[0]}"
  speedup = {b: {n: r["tokens_per_s"] / results[b][base]["tokens_per_s"] for n, r in rows.items()}
             for b, rows in results.items()}
  return {"config": cfg.to_dict(), "baseline": base,
          "settings": dict(batch_sizes=list(batch_sizes), ks=list(ks), num_tokens=num_tokens, readout=readout,
                           prompt_len=prompt_len, repeats=repeats, unroll=unroll, backend=jax.default_backend(),
                           devices=str(jax.devices()[0].device_kind)),
          "results": results, "speedup": speedup}


def plot_speedup(report: dict, path: str, title: str = "") -> None:
  """Speed-up over the AR baseline vs batch size, one line per decoder, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  batches = sorted(report["speedup"], key=int)
  names = list(report["speedup"][batches[0]])
  fig, ax = plt.subplots(figsize=(6, 4))
  for n in names:
    if n == report["baseline"]:
      continue
    ax.plot([int(b) for b in batches], [report["speedup"][b][n] for b in batches], marker="o", label=n)
  ax.axhline(1.0, color="gray", lw=0.8, ls="--")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("batch size")
  ax.set_ylabel(f"speed-up over {report['baseline']} (tokens/s)")
  ax.set_title(title or "decoding speed-up vs batch size")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown_table(report: dict) -> str:
  """The sweep as a markdown table: tokens/s (speed-up) per decoder and batch size, plus prefill ms."""
  batches = sorted(report["results"], key=int)
  names = list(report["results"][batches[0]])
  lines = ["| decoder | " + " | ".join(f"B={b}" for b in batches) + " |", "|---" * (len(batches) + 1) + "|"]
  for n in names:
    cells = []
    for b in batches:
      r = report["results"][b][n]
      cell = f"{r['tokens_per_s']:.0f} ({report['speedup'][b][n]:.2f}x)"
      if "tokens_per_pass" in r:
        cell += f", {r['tokens_per_pass']:.2f} tok/pass"
      cells.append(cell)
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  lines.append("| prefill ms (k4 / AR) | " + " | ".join(
      f"{1e3 * report['results'][b].get('k4', report['results'][b][names[0]])['prefill_s']:.1f} / "
      f"{1e3 * report['results'][b][report['baseline']]['prefill_s']:.1f}" for b in batches) + " |")
  return "\n".join(lines)
