"""A method self-test on a teacher whose conditionals are known: a random sparse Markov chain.

The chain has `vocab` states; each state moves to `successors` random states with Dirichlet(`alpha`) weights. An
AR transformer is fitted to it (dense KL to the true transition row at every position, fresh chain samples each
step), then distilled AR -> k=1 -> 2 -> 4 with a push-forward `Objective` (each stage starts from the previous
one), exactly as the trainer does on text, only with the data drawn from the chain. At the end of each stage:
per-slot KL / TV against the teacher along the student's own readout (`metrics.slot_fidelity`), and, at the
largest K, tokens per teacher pass of speculative and shared-noise verify decoding.

  from kforcing_jax.evaluation import known_teacher
  result = known_teacher.run(known_teacher.Settings())        # benchmarks/known_teacher.py writes JSON + PNG
"""
import dataclasses
import time
from typing import Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kforcing_jax.decoding import common, speculative, verify
from kforcing_jax.distill import losses, objectives
from kforcing_jax.evaluation import metrics
from kforcing_jax.models import KForcingLM, ModelConfig, init_params


@dataclasses.dataclass(frozen=True)
class Settings:
  """Sizes and recipe of one self-test run."""
  vocab: int = 32
  successors: int = 4
  alpha: float = 0.5
  seq_len: int = 32
  batch: int = 32
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  teacher_steps: int = 300
  stage_steps: Sequence[int] = (150, 300, 300)   # k = 1, 2, 4
  stage_ks: Sequence[int] = (1, 2, 4)
  lr: float = 3e-3
  distill_lr: float = 3e-3
  loss: str = "kl"
  readout: str = "sample"
  rollout: str = "teacher"
  hint_noise: str = "previous"
  noise_features: str = "sinusoid"
  feedback_layers: int = 1         # token feedback into the last blocks (`ModelConfig.feedback_layers`)
  noise_encoder_lr_mult: float = 1.0
  decision_weight: float = 1.0
  ema_decay: float = 0.0           # > 0: evaluate and keep an EMA of the student's params
  eval_every: int = 100
  eval_seqs: int = 32
  decode_rows: int = 64
  decode_tokens: int = 24
  seed: int = 0


def markov_chain(s: Settings) -> np.ndarray:
  """The transition matrix [V, V] (float64, rows sum to 1) of a random sparse chain."""
  rng = np.random.default_rng(s.seed)
  trans = np.zeros((s.vocab, s.vocab))
  for a in range(s.vocab):
    nxt = rng.choice(s.vocab, s.successors, replace=False)
    trans[a, nxt] = rng.dirichlet(np.full(s.successors, s.alpha))
  return trans


def sample_chain(trans: np.ndarray, key, rows: int, length: int):
  """Sequences [rows, length] int32 of the chain from uniform start states (jittable)."""
  logt = jnp.log(jnp.asarray(trans, jnp.float32))
  k0, k1 = jax.random.split(key)
  x0 = jax.random.randint(k0, (rows,), 0, trans.shape[0])

  def step(x, k):
    y = jax.random.categorical(k, logt[x])
    return y, y

  _, rest = jax.lax.scan(step, x0, jax.random.split(k1, length - 1))
  return jnp.concatenate([x0[:, None], rest.T], 1).astype(jnp.int32)


def _config(s: Settings, k: int) -> ModelConfig:
  return ModelConfig(vocab_size=s.vocab, num_layers=s.num_layers, d_model=s.d_model, num_heads=s.num_heads,
                     mlp_dim=s.mlp_dim, max_len=s.seq_len + 8, k_max=k, hint_noise=s.hint_noise,
                     feedback_layers=s.feedback_layers if k else 0,
                     noise_features=s.noise_features)


def _fit(loss_fn, params, steps, lr, key, log, eval_fn=None, eval_every=0, enc_mult=1.0, ema_decay=0.0):
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps, lr * 0.1))
  if enc_mult != 1.0:
    labels = {n: jax.tree.map(lambda _: "enc" if n == "noise_encoder" else "rest", v) for n, v in params.items()}
    tx = optax.chain(tx, optax.multi_transform({"enc": optax.scale(enc_mult), "rest": optax.identity()}, labels))
  opt = tx.init(params)
  ema = optax.ema(ema_decay, debias=True) if ema_decay else None
  ema_state = ema.init(params) if ema else None

  @jax.jit
  def step(params, opt, ema_state, key):
    (loss, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, key)
    upd, opt = tx.update(g, opt, params)
    params = optax.apply_updates(params, upd)
    if ema is None:
      return params, opt, ema_state, params
    avg, ema_state = ema.update(params, ema_state)
    return params, opt, ema_state, avg

  curve, kept = [], params
  for i in range(1, steps + 1):
    params, opt, ema_state, kept = step(params, opt, ema_state, jax.random.fold_in(key, i))
    if eval_fn is not None and (i % eval_every == 0 or i == steps):
      curve.append({"step": i, **eval_fn(kept)})
      log(f"  step {i}: {curve[-1]}")
  return kept, curve


def fit_teacher(s: Settings, trans: np.ndarray, log=print):
  """An AR model fitted to the chain by dense KL at every position; returns (cfg, params, KL to the chain)."""
  cfg = _config(s, 0)
  model = KForcingLM(cfg)
  logt = jnp.log(jnp.asarray(trans, jnp.float32) + 1e-30)

  def kl_to_chain(params, tok):
    logits = model.apply({"params": params}, tok)
    return losses.kl_divergence(logt[tok], logits).mean()

  def loss_fn(params, key):
    loss = kl_to_chain(params, sample_chain(trans, key, s.batch, s.seq_len))
    return loss, {"loss": loss}

  held = sample_chain(trans, jax.random.key(s.seed + 99), s.eval_seqs, s.seq_len)
  evaluate = jax.jit(kl_to_chain)
  params, _ = _fit(loss_fn, init_params(cfg, jax.random.key(s.seed)), s.teacher_steps, s.lr,
                   jax.random.key(s.seed + 1), log)
  return cfg, params, float(evaluate(params, held))


def _transfer(student, teacher):
  flat = flax.traverse_util.flatten_dict(student)
  flat.update({k: v for k, v in flax.traverse_util.flatten_dict(teacher).items() if k in flat})
  return flax.traverse_util.unflatten_dict(flat)


def distill_stage(s: Settings, trans, k: int, teacher, init, steps: int, log=print):
  """One push-forward stage with targets from the AR teacher; returns (cfg, params, eval curve)."""
  t_cfg, t_params = teacher
  cfg = _config(s, k)
  model, t_model = KForcingLM(cfg), KForcingLM(t_cfg)
  obj = objectives.Objective(k=k, loss=s.loss, readout=s.readout, rollout=s.rollout,
                             decision_weight=s.decision_weight)
  params = _transfer(init_params(cfg, jax.random.key(s.seed + 10 + k)), init)
  ones = jnp.ones((s.batch, s.seq_len))

  def loss_fn(p, key):
    k_data, k_obj = jax.random.split(key)
    tok = sample_chain(trans, k_data, s.batch, s.seq_len)
    return objectives.pflm_loss(obj, model, p, t_model, t_params, tok, ones, k_obj)

  held = sample_chain(trans, jax.random.key(s.seed + 99), s.eval_seqs, s.seq_len)
  fid = lambda p: metrics.slot_fidelity(cfg, p, t_cfg, t_params, held, k, s.readout, seed=s.seed + 7)
  params, curve = _fit(loss_fn, params, steps, s.distill_lr, jax.random.key(s.seed + 20 + k), log,
                       lambda p: {n: fid(p)[n] for n in ("slot_kl", "slot_tv")}, s.eval_every,
                       s.noise_encoder_lr_mult, s.ema_decay)
  return cfg, params, curve


def tokens_per_pass(s: Settings, trans, student, teacher, k: int) -> dict:
  """Mean tokens per teacher pass of speculative and shared-noise verify decoding on held-out chain prompts."""
  (s_cfg, s_params), (t_cfg, t_params) = student, teacher
  prompts = np.asarray(sample_chain(trans, jax.random.key(s.seed + 123), s.decode_rows, 4))
  tok, lens = common.pad_prompts(prompts.tolist())
  tok, lens = jnp.asarray(tok), jnp.asarray(lens)
  n = s.decode_tokens
  _, passes, _ = speculative.decoder(s_cfg, t_cfg, k, n)(s_params, t_params, tok, lens, s.seed, 1.0, 0)
  _, vpasses = verify.decoder(s_cfg, t_cfg, k, n, s.readout)(s_params, t_params, tok, lens, s.seed, 1.0, 0)
  rows_tokens = s.decode_rows * n
  return {"speculative_tokens_per_pass": rows_tokens / float(np.sum(np.asarray(passes))),
          "verify_tokens_per_pass": rows_tokens / float(np.sum(np.asarray(vpasses)))}


def run(s: Settings = Settings(), log=print, stages: Optional[Sequence[int]] = None,
        models: Optional[dict] = None) -> dict:
  """The whole self-test: fit the teacher, distill the chain of stages, measure. Returns a JSON-able dict.

  If `models` is a dict, it receives "teacher" and "student" (the last stage), each as (cfg, params).
  """
  t0 = time.time()
  trans = markov_chain(s)
  ent = -(trans * np.log(np.where(trans > 0, trans, 1.0))).sum(1).mean()
  log(f"[known teacher] chain: {s.vocab} states, {s.successors} successors, mean entropy {ent:.3f} nats")
  t_cfg, t_params, t_kl = fit_teacher(s, trans, log)
  log(f"[known teacher] teacher fitted: KL to the chain {t_kl:.4f} nats ({time.time() - t0:.0f} s)")
  out = {"settings": dataclasses.asdict(s), "chain_entropy": float(ent), "teacher_kl_to_chain": t_kl, "stages": {}}
  init, teacher = t_params, (t_cfg, t_params)
  for k, steps in zip(stages or s.stage_ks, s.stage_steps):
    t1 = time.time()
    cfg, params, curve = distill_stage(s, trans, k, teacher, init, steps, log)
    res = {"steps": steps, "curve": curve, "wall_s": time.time() - t1,
           **metrics.slot_fidelity(cfg, params, t_cfg, t_params,
                                   sample_chain(trans, jax.random.key(s.seed + 77), s.eval_seqs, s.seq_len), k,
                                   s.readout, seed=s.seed + 8)}
    res.update(tokens_per_pass(s, trans, (cfg, params), teacher, k))
    log(f"[known teacher] k={k}: slot KL {np.round(res['slot_kl'], 4).tolist()}, speculative "
        f"{res['speculative_tokens_per_pass']:.2f} / verify {res['verify_tokens_per_pass']:.2f} tokens per pass "
        f"({res['wall_s']:.0f} s)")
    out["stages"][str(k)] = res
    init = params
  out["wall_s"] = time.time() - t0
  if models is not None:
    models.update(teacher=teacher, student=(cfg, params))
  return out
