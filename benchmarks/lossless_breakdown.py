"""Where a speculative iteration's time goes, against one AR step: the parts of the loop timed one by one.

One speculative iteration (`decoding.speculative.loop`) runs a teacher pass over K+1 rows (the last accepted token
and K drafts), the accept / residual arithmetic, the bookkeeping of `verify.commit`, and one student step over
K+1 fed-back rows plus K hints. It emits `tokens_per_pass` tokens on average where an AR step emits one, so the
best the mode can do is tokens_per_pass x t(AR step) / t(iteration). This script times each part (jitted, batch B,
at a cache length in the middle of a 122-token generation), the whole decoders (`evaluation.benchmark`), and prints
the table docs/benchmarks.md shows.

  python -m benchmarks.lossless_breakdown --student_workdir demo_out/k4 --teacher_workdir demo_out/ar
"""
import statistics
import time

import jax
import jax.numpy as jnp
from absl import flags

from kforcing_jax import cli

flags.DEFINE_string("student_workdir", "demo_out/k4", "the push-forward student (drafts)")
flags.DEFINE_string("teacher_workdir", "demo_out/ar", "the AR teacher")
flags.DEFINE_integer("k", 4, "drafts per iteration")
flags.DEFINE_integer("batch", 1, "rows")
flags.DEFINE_integer("repeats", 7, "timed repeats of 20 calls each (median reported)")
FLAGS = flags.FLAGS
NUM_TOKENS, PROMPT_LEN, CACHE_LEN = 122, 6, 66


def _ms(fn, *args, repeats):
  fn = jax.jit(fn)
  jax.block_until_ready(fn(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(20):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t0) / 20)
  return 1e3 * statistics.median(ts)


def parts(student, teacher, k: int, b: int, repeats: int) -> dict:
  """Milliseconds of each part of one iteration (and of one AR step with its sampler) at batch b."""
  from kforcing_jax.decoding import ar, speculative, verify
  from kforcing_jax.evaluation import benchmark
  from kforcing_jax.models.transformer import KForcingLM, init_cache

  sc, tc = student.config, teacher.config
  s_m, t_m = KForcingLM(sc), KForcingLM(tc)
  size = verify.cache_size(PROMPT_LEN, NUM_TOKENS, k)

  def cache(cfg):
    return dict(init_cache(cfg, b, size), len=jnp.full((b,), CACHE_LEN, jnp.int32))

  ct, cs = cache(tc), cache(sc)
  u_BxK, tau_B = jnp.full((b, k), 0.3), jnp.ones((b,))
  ones = lambda n: jnp.ones((b, n), jnp.int32)
  q_BxKxV = jax.random.normal(jax.random.key(0), (b, k, tc.vocab_size))
  p_BxK1xV = jax.random.normal(jax.random.key(1), (b, k + 1, tc.vocab_size))
  noises = speculative._noises(sc, 0, b, PROMPT_LEN, NUM_TOKENS, k, 0)
  state = speculative.prefill(sc, student.params, tc, teacher.params, ones(PROMPT_LEN),
                              jnp.full((b,), PROMPT_LEN, jnp.int32), noises, 1.0, k=k, num_tokens=NUM_TOKENS)
  ar_step = lambda p, c: ar.sample_token(t_m.apply({"params": p}, ones(1), jnp.ones((b,), jnp.int32), c,
                                                   ctx_logits="last", method=t_m.decode)[0], u_BxK[:, 0], 1.0,
                                         benchmark.AR_BASELINE)
  score = lambda p, c: t_m.apply({"params": p}, ones(k + 1), jnp.full((b,), k + 1, jnp.int32), c, ctx_logits="all",
                                 method=t_m.decode)
  draft = lambda p, c: speculative._draft(s_m, p, ones(k + 1), jnp.full((b,), k // 2 + 1, jnp.int32), c,
                                          noises[0], noises[1], tau_B, k)
  accept = lambda p, q: speculative._verify(p, q, jnp.zeros((b, k), jnp.int32), u_BxK, jnp.full((b, k + 1), 0.5), 1.0)
  commit = lambda s, c: verify.commit(s, c, ones(k + 1), jnp.full((b,), k // 2, jnp.int32), NUM_TOKENS)
  return {"ar_step": _ms(ar_step, teacher.params, ct, repeats=repeats),
          "teacher_score": _ms(score, teacher.params, ct, repeats=repeats),
          "student_draft": _ms(draft, student.params, cs, repeats=repeats),
          "accept": _ms(accept, p_BxK1xV, q_BxKxV, repeats=repeats),
          "commit": _ms(commit, state, state["ct"], repeats=repeats)}


def main(argv):
  del argv
  from kforcing_jax import api
  from kforcing_jax.evaluation import benchmark

  if FLAGS.k < 1 or FLAGS.batch < 1 or FLAGS.repeats < 1:
    raise ValueError(f"--k, --batch and --repeats must be >= 1, got {FLAGS.k}, {FLAGS.batch}, {FLAGS.repeats}")
  student, teacher = api.load(FLAGS.student_workdir), api.load(FLAGS.teacher_workdir)
  api.check_pair(student, teacher)
  if FLAGS.k > student.k_max:
    raise ValueError(f"--k {FLAGS.k} > the student's k_max {student.k_max}")
  ms = parts(student, teacher, FLAGS.k, FLAGS.batch, FLAGS.repeats)
  pair = (teacher.config, teacher.params)
  whole = {mode: benchmark.time_decoder(mode, teacher.config if mode == "ar" else student.config,
                                        teacher.params if mode == "ar" else student.params, FLAGS.batch, k=FLAGS.k,
                                        teacher=pair, readout=student.trained_readout, repeats=3)
           for mode in ("ar", "speculative")}
  iteration = sum(v for n, v in ms.items() if n != "ar_step")
  tpp = whole["speculative"]["tokens_per_pass"]
  loop_ms = 1e3 * whole["speculative"]["loop_s"] / (NUM_TOKENS / tpp)
  print(f"backend {jax.default_backend()}, student {FLAGS.student_workdir} (K={FLAGS.k}), teacher "
        f"{FLAGS.teacher_workdir}, batch {FLAGS.batch}, {NUM_TOKENS} new tokens")
  print("| part | ms | x AR step |\n|---|---|---|")
  for name, v in ms.items():
    print(f"| {name} | {v:.2f} | {v / ms['ar_step']:.2f} |")
  print(f"| iteration (sum of the parts) | {iteration:.2f} | {iteration / ms['ar_step']:.2f} |")
  print(f"| iteration in the loop (loop time / iterations) | {loop_ms:.2f} | {loop_ms / ms['ar_step']:.2f} |")
  print(f"\ntokens per teacher pass {tpp:.2f}; bound from the parts: {tpp * ms['ar_step'] / iteration:.2f}x AR; "
        f"measured: speculative {whole['speculative']['tokens_per_s']:.0f} tok/s vs AR "
        f"{whole['ar']['tokens_per_s']:.0f} tok/s = "
        f"{whole['speculative']['tokens_per_s'] / whole['ar']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
  cli.run(main)  # quiet logging; bad input -> one error line, exit 2
