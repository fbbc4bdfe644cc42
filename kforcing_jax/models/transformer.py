"""`KForcingLM`: the AR teacher (k_max = 0) and the push-forward LM (k_max >= 1) as one linen module.

Both share the backbone parameter names, so an AR teacher's params are a subtree of the student's and the
reference's weight transfer (docs/method.md §6) is a dict merge. Methods:
  __call__        AR full forward                         tok_BxN -> logits_BxNxV
  staircase       push-forward training forward            (ctx_BxW, noise_BxWxK, tau_B) -> logits_BxWxKxV
  prefix_logits   AR logits along given continuations      (ctx_BxW, y_BxWxJ) -> logits_BxWx(J+1)xV
  double_forward  the k->2k teacher's second pass          (ctx_BxW, y1_BxWxK, noise2_BxWxK, tau_B) -> logits_BxWxKxV
  context_states  AR forward keeping every layer's K/V     ctx_BxW -> (logits_BxWxV, states)
  window_step     token j of every window's AR rollout     (y_BxW, ctx states, window states, j) -> logits_BxWxV
  decode          one cached decode step (AR or push-forward), ragged rows
"""
import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from kforcing_jax.models import attention
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.layers import Block, LayerNorm, NoiseEncoder, constrain, kernel_init, part

NEG_LOGIT = -1000.0


def _staircase_attend(q, k, v, state, *, w, kk, impl, block_q, block_k):
  b, _, h, d = q.shape
  k, v = attention.expand_kv(k, h), attention.expand_kv(v, h)
  split = lambda x: (x[:, :w], x[:, w:].reshape(b, w, kk, h, d))
  (qc, qh), (kc, kh), (vc, vh) = split(q), split(k), split(v)
  oc, oh = attention.staircase_attention(qc, kc, vc, qh, kh, vh, impl=impl, block_q=block_q, block_k=block_k)
  return jnp.concatenate([oc, oh.reshape(b, w * kk, h, d)], 1), state


def _decode_attend(q, k, v, layer_cache, *, start_B, kv_len_B, pos_BxQ, n_ctx, impl):
  kc, vc = layer_cache
  kc = attention.write_cache(kc, k[:, :n_ctx], start_B)
  vc = attention.write_cache(vc, v[:, :n_ctx], start_B)
  h = q.shape[2]
  kh, vh = (k[:, n_ctx:], v[:, n_ctx:]) if q.shape[1] > n_ctx else (None, None)
  if kh is not None:
    kh, vh = attention.expand_kv(kh, h), attention.expand_kv(vh, h)
  # The cache keeps the Hkv heads (GQA's memory saving); they are repeated per step for the attention.
  o = attention.decode_attention(q, pos_BxQ, attention.expand_kv(kc, h, 1), attention.expand_kv(vc, h, 1),
                                 kv_len_B, n_ctx, kh, vh, impl=impl)
  return o, (kc, vc)


def _feedback_attend(q, k, v, layer_state, *, start_B, kv_len_B, pos_BxQ, n_ctx, impl):
  # A feedback block in decoding: [n_ctx context rows | new hint rows] against the cache (written here for the
  # context rows) plus every hint row this block has seen so far in the step (kept in the state).
  (kc, vc), (kh, vh) = layer_state
  if n_ctx:
    kc = attention.write_cache(kc, k[:, :n_ctx], start_B)
    vc = attention.write_cache(vc, v[:, :n_ctx], start_B)
  h = q.shape[2]
  n_prev = 0 if kh is None else kh.shape[1]
  new_k, new_v = attention.expand_kv(k[:, n_ctx:], h), attention.expand_kv(v[:, n_ctx:], h)
  kh = new_k if kh is None else jnp.concatenate([kh, new_k], 1)
  vh = new_v if vh is None else jnp.concatenate([vh, new_v], 1)
  # Hint row r of this call is hint n_prev + r of the step: shifting n_ctx down by n_prev lets it see hints
  # 1..n_prev + r (the XLA path; the Pallas decode kernel takes only the first call's layout).
  o = attention.decode_attention(q, pos_BxQ, attention.expand_kv(kc, h, 1), attention.expand_kv(vc, h, 1),
                                 kv_len_B, n_ctx - n_prev, kh, vh, impl=impl if not n_prev else "split")
  return o, ((kc, vc), (kh, vh))


def _add_feedback(x_BxTxD, fb_BxTxD):
  # The residual stream is ~100x the embeddings' scale a few blocks in, where a raw token embedding would vanish in
  # the next LayerNorm: each feedback row is rescaled to the RMS of the row it joins (zero rows stay zero).
  rms = lambda a: jnp.sqrt(jnp.mean(jnp.square(a.astype(jnp.float32)), -1, keepdims=True))
  scale = jax.lax.stop_gradient(rms(x_BxTxD)) / (rms(fb_BxTxD) + 1e-6)
  return x_BxTxD + (fb_BxTxD.astype(jnp.float32) * scale).astype(x_BxTxD.dtype)


def _slot_rows(cfg: ModelConfig, x, axis: int):
  # The slot hints among all hints: every other one (D_1, D_2, ...) in the "interleaved" layout.
  if cfg.hint_noise != "interleaved":
    return x
  return jax.lax.slice_in_dim(x, 0, x.shape[axis], 2, axis)


def init_cache(cfg: ModelConfig, batch: int, size: int, dtype=None) -> dict:
  """A zeroed KV cache: per-layer [B, H, size, D] keys/values (heads-major) and the per-row number of valid slots.

  Args:
    cfg: model config.
    batch: rows.
    size: slots per row; must cover the longest position written plus one step's queries.
    dtype: cache dtype (default: the compute dtype).
  Returns:
    {"k": [L arrays], "v": [L arrays], "len": int32 [B]}.
  """
  shape = (batch, cfg.kv_heads, size, cfg.head_dim)
  dtype = dtype or cfg.dtype
  zeros = lambda: [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)]
  return {"k": zeros(), "v": zeros(), "len": jnp.zeros((batch,), jnp.int32)}


class KForcingLM(nn.Module):
  """Transformer backbone (+ noise encoder when cfg.k_max >= 1); see the module docstring for the methods."""
  cfg: ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embed = nn.Embed(cfg.vocab_size, cfg.d_model, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                          embedding_init=part(kernel_init, ("vocab", "embed")))
    block = nn.remat(Block, static_argnums=(3, 5)) if cfg.remat else Block
    self.blocks = [block(cfg, name=f"block_{i}") for i in range(cfg.num_layers)]
    if cfg.position == "learned":
      self.pos_embed = nn.Embed(cfg.max_len, cfg.d_model, param_dtype=cfg.param_dtype, dtype=cfg.dtype,
                                embedding_init=part(kernel_init, (None, "embed")))
    self.final_norm = LayerNorm(cfg)
    if not cfg.tie_embeddings:
      # Zero-initialised head as in the reference's DDitFinalLayer.
      self.head = nn.Dense(cfg.vocab_size, use_bias=cfg.head_bias, dtype=jnp.float32, param_dtype=cfg.param_dtype,
                           kernel_init=part(nn.initializers.zeros, ("embed", "vocab")),
                           bias_init=part(nn.initializers.zeros, ("vocab",)))
    if cfg.is_pflm:
      self.noise_encoder = NoiseEncoder(cfg)

  # ---- shared pieces ----
  def _logits(self, x):
    y = self.final_norm(x)
    if self.cfg.tie_embeddings:
      logits = self.embed.attend(y.astype(jnp.float32)).astype(jnp.float32)
    else:
      logits = self.head(y)
    if self.cfg.mask_index >= 0:
      logits = logits.at[..., self.cfg.mask_index].set(NEG_LOGIT)
    return constrain(logits, ("batch", "length", "vocab"))

  def _run(self, x, pos, attend, states, deterministic, feedback=None):
    if self.cfg.position == "learned":  # hints read the table at their own positions t + i, like tokens
      x = x + self.pos_embed(jnp.minimum(pos, self.cfg.max_len - 1)).astype(x.dtype)
    lo = self.cfg.num_layers - self.cfg.feedback_layers
    x, new_states = self._blocks(x, pos, attend, states, deterministic, 0, lo)
    if feedback is not None:
      x = _add_feedback(x, feedback)
    x, tail = self._blocks(x, pos, attend, None if states is None else states[lo:], deterministic, lo,
                           self.cfg.num_layers)
    return x, new_states + tail

  def _blocks(self, x, pos, attend, states, deterministic, lo: int, hi: int):
    # Blocks lo..hi-1; `states` holds theirs, in order (or None).
    new_states = []
    for i in range(lo, hi):
      x, s = self.blocks[i](x, pos, attend, None if states is None else states[i - lo], deterministic)
      new_states.append(s)
    return x, new_states

  def feedback_embedding(self, y_xK):
    """What the feedback blocks add to each hint: zero for hint 1, the embedding of y_{i-1} for hint i.

    Args:
      y_xK: the tokens each slot emitted (or, in training, the rollout's tokens) [..., K].
    Returns:
      [..., K, D] in the compute dtype.
    """
    e = self.embed(y_xK[..., :-1])
    return jnp.concatenate([jnp.zeros_like(e[..., :1, :]), e], -2)

  def _check_k(self, k: int, allow_double: bool = False):
    if not self.cfg.is_pflm:
      raise ValueError("this is an AR model (k_max=0): it has no noise encoder")
    hi = 2 * self.cfg.k_max if allow_double else self.cfg.k_max
    if not 1 <= k <= hi:
      raise ValueError(f"K={k} outside 1..{hi} (k_max={self.cfg.k_max})")

  def _check_len(self, n: int):
    if n > self.cfg.max_len:
      raise ValueError(f"sequence of {n} positions exceeds max_len={self.cfg.max_len}")

  def encode_hints(self, noise_BxWxK, tau_B):
    return self.noise_encoder(noise_BxWxK, tau_B)

  # ---- AR ----
  def __call__(self, tok_BxN, deterministic: bool = True):
    """AR forward: next-token logits [B, N, V] (float32) at every position."""
    b, n = tok_BxN.shape
    self._check_len(n)
    pos = jnp.broadcast_to(jnp.arange(n), (b, n))
    h = self.cfg.num_heads
    attend = lambda q, k, v, s: (attention.causal_attention(q, attention.expand_kv(k, h), attention.expand_kv(v, h)),
                                 s)
    x, _ = self._run(self.embed(tok_BxN), pos, attend, None, deterministic)
    return self._logits(x)

  # ---- push-forward training ----
  def staircase_from_hints(self, ctx_BxW, hint_BxWxKxD, deterministic: bool = True, return_ctx_logits=False,
                           offsets=None, feedback_BxWxKxD=None):
    """Staircase forward with given hint embeddings (noise hints, or real tokens for the double forward).

    Hint j of window t sits at position t + offsets[j] (default: t + j + 1); returns logits of every hint.
    `feedback_BxWxKxD` (token feedback) is added to the hints before the last cfg.feedback_layers blocks.
    """
    b, w = ctx_BxW.shape
    kk = hint_BxWxKxD.shape[2]
    offsets = tuple(range(1, kk + 1)) if offsets is None else tuple(offsets)
    self._check_len(w + max(offsets))
    x = jnp.concatenate([self.embed(ctx_BxW), hint_BxWxKxD.reshape(b, w * kk, -1).astype(self.cfg.dtype)], 1)
    pos_h = (jnp.arange(w)[:, None] + jnp.asarray(offsets)[None, :]).reshape(-1)
    pos = jnp.broadcast_to(jnp.concatenate([jnp.arange(w), pos_h]), (b, w + w * kk))
    attend = functools.partial(_staircase_attend, w=w, kk=kk, impl=self.cfg.attention_impl,
                               block_q=self.cfg.block_q, block_k=self.cfg.block_k)
    fb = None
    if feedback_BxWxKxD is not None:
      fb = jnp.concatenate([jnp.zeros((b, w, x.shape[-1]), x.dtype),
                            feedback_BxWxKxD.reshape(b, w * kk, -1).astype(x.dtype)], 1)
    x, _ = self._run(constrain(x, ("batch", "length", "embed")), pos, attend, None, deterministic, fb)
    hint_logits = self._logits(x[:, w:]).reshape(b, w, kk, -1)
    if return_ctx_logits:
      return hint_logits, self._logits(x[:, :w])
    return hint_logits

  def staircase(self, ctx_BxW, noise_BxWxK, tau_B, deterministic: bool = True, return_ctx_logits=False,
                return_decision_logits=False, feedback_BxWxK=None):
    """Push-forward training forward (the reference's global staircase mask).

    Args:
      ctx_BxW: context tokens c_0..c_{W-1}; window t predicts the tokens at positions t+1..t+K.
      noise_BxWxK: uniform noises, one per (window, slot).
      tau_B: temperature fed to the noise encoder.
      deterministic: no dropout when True.
      return_ctx_logits: also return the context stream's next-token logits [B, W, V].
      return_decision_logits: also return the decision hints' logits [B, W, K, V] ("interleaved" layout).
      feedback_BxWxK: token feedback (cfg.feedback_layers > 0, K >= 2): the tokens y_1..y_K of each window's
        rollout; hint i is given y_{i-1} (teacher forcing, so all slots train in one pass).
    Returns:
      Slot logits [B, W, K, V] (float32), and the context or decision logits if asked.
    """
    kk = noise_BxWxK.shape[-1]
    self._check_k(kk)
    if return_decision_logits and (return_ctx_logits or self.cfg.hint_noise != "interleaved"):
      raise ValueError("decision logits exist only for hint_noise='interleaved', without context logits")
    hints = self.encode_hints(noise_BxWxK, tau_B)
    fb = None
    if self.cfg.feedback_layers and kk > 1:
      if feedback_BxWxK is None:
        raise ValueError("a token-feedback model (feedback_layers > 0) needs the rollout tokens (feedback_BxWxK)")
      fb = self.feedback_embedding(feedback_BxWxK)
    out = self.staircase_from_hints(ctx_BxW, hints, deterministic, return_ctx_logits, self.cfg.hint_offsets(kk),
                                    fb)
    logits, ctx = (out, None) if not return_ctx_logits else out
    slots = _slot_rows(self.cfg, logits, 2)
    if return_decision_logits:
      return slots, logits[:, :, 1::2]
    return slots if not return_ctx_logits else (slots, ctx)

  def prefix_logits(self, ctx_BxW, y_BxWxJ):
    """Next-token logits of every window along given continuations, in one staircase pass (AR path).

    Window t's continuation y_1..y_J sits at positions t+1..t+J as real tokens; no noise encoder is used, so this
    works for an AR teacher as well as a push-forward LM's context stream.

    Args:
      ctx_BxW: data contexts (window t has context tok[:t+1]).
      y_BxWxJ: continuation tokens of each window (J >= 0).
    Returns:
      Logits [B, W, J + 1, V]: slot i (0-based) predicts position t+1+i given the context and y_1..y_i.
    """
    b, w = ctx_BxW.shape
    if y_BxWxJ.shape[-1] == 0:
      return self(ctx_BxW)[:, :, None]
    hint_logits, ctx_logits = self.staircase_from_hints(ctx_BxW, self.embed(y_BxWxJ), True, True)
    return jnp.concatenate([ctx_logits[:, :, None], hint_logits], 2)

  def context_states(self, ctx_BxW):
    """AR forward over the contexts that keeps each layer's keys / values: the prefix `window_step` reuses.

    Returns:
      (next-token logits [B, W, V], per-layer (keys, values) [B, W, Hkv, D] after RoPE).
    """
    b, w = ctx_BxW.shape
    self._check_len(w)
    h = self.cfg.num_heads
    attend = lambda q, k, v, s: (attention.causal_attention(q, attention.expand_kv(k, h), attention.expand_kv(v, h)),
                                 (k, v))
    x, states = self._run(self.embed(ctx_BxW), jnp.broadcast_to(jnp.arange(w), (b, w)), attend,
                          [None] * self.cfg.num_layers, True)
    return self._logits(x), states

  def window_step(self, y_BxW, ctx_states, window_states=None, *, j: int):
    """Token y_j of every window's continuation (j >= 1, at position t + j) through the AR path, as if each window
    were its own sequence ctx[:t+1], y_1..y_j: the same logits as `prefix_logits` at slot j, for one new row per
    window instead of the whole staircase again.

    Args:
      y_BxW: each window's j-th continuation token.
      ctx_states: from `context_states`.
      window_states: this method's states after y_{j-1} (None for j = 1).
      j: the 1-based index of y in the continuation (static).
    Returns:
      (logits [B, W, V] predicting position t + j + 1, window states including y_j).
    """
    b, w = y_BxW.shape
    self._check_len(w + j)
    h = self.cfg.num_heads
    states = [(c, s) for c, s in zip(ctx_states, window_states or [None] * self.cfg.num_layers)]

    def attend(q, k, v, state):
      (kc, vc), own = state
      kh, vh = k[:, :, None], v[:, :, None]
      if own is not None:
        kh, vh = jnp.concatenate([own[0], kh], 2), jnp.concatenate([own[1], vh], 2)
      o = attention.window_attention(q, attention.expand_kv(kc, h), attention.expand_kv(vc, h),
                                     attention.expand_kv(kh, h, 3), attention.expand_kv(vh, h, 3))
      return o, ((kc, vc), (kh, vh))

    x, new = self._run(self.embed(y_BxW), jnp.broadcast_to(jnp.arange(w) + j, (b, w)), attend, states, True)
    return self._logits(x), [own for _, own in new]

  def double_forward(self, ctx_BxW, y1_BxWxK, noise2_BxWxK, tau_B):
    """The k-model's second rollout step for every window at once (docs/method.md §6, step 3).

    Args:
      ctx_BxW: data contexts.
      y1_BxWxK: the model's own first-step tokens (positions t+1..t+k), fed back as real tokens.
      noise2_BxWxK: noises of the second step (positions t+k+1..t+2k).
      tau_B: temperature.
    Returns:
      Logits [B, W, K, V] of the second step's hints.
    """
    kk, k2 = y1_BxWxK.shape[-1], noise2_BxWxK.shape[-1]
    if self.cfg.feedback_layers:
      raise ValueError("a token-feedback model takes its targets from the AR teacher (target_teacher=ar), not from "
                       "its own doubling")
    self._check_k(kk)
    self._check_k(k2)
    hints = jnp.concatenate([self.embed(y1_BxWxK), self.encode_hints(noise2_BxWxK, tau_B)], 2)
    offsets = tuple(range(1, kk + 1)) + tuple(kk + o for o in self.cfg.hint_offsets(k2))
    logits = self.staircase_from_hints(ctx_BxW, hints, True, offsets=offsets)[:, :, kk:]
    return _slot_rows(self.cfg, logits, 2)

  # ---- decoding ----
  def decode(self, tok_BxT, n_new_B, cache, noise_BxK: Optional[jax.Array] = None, tau_B=None,
             ctx_logits: str = "none", pick=None):
    """One cached decode step: write T context tokens per row, then (push-forward) read K hint logits.

    Row b's tokens go to positions cache["len"][b] + 0..T-1; only the first n_new_B[b] are real (the rest are
    padding that stays masked until overwritten). Hint i (1-based) sits at position len_new - 1 + i, the position
    of the token it predicts; hints attend to every valid slot and to earlier hints, and are never cached.

    Args:
      tok_BxT: context tokens to append (a prompt at prefill, the previous step's tokens afterwards).
      n_new_B: how many of the T tokens are real, per row (>= 1).
      cache: from `init_cache`; cache["len"] is the number of valid slots per row.
      noise_BxK: uniform noises for K hints (push-forward), or None (AR step).
      tau_B: temperature fed to the noise encoder (push-forward only).
      ctx_logits: "none" | "last" (logits after the last real token, [B, V]) | "all" ([B, T, V]).
      pick: token feedback (cfg.feedback_layers > 0, K >= 2): fn(i, logits_BxV) -> int32 [B], the token slot i
        (0-based) emits; it is called for i = 0..K-1 in order, and its token i is fed back to hint i + 1.
    Returns:
      (ctx logits or None, hint logits [B, K, V] or None, new cache).
    """
    b, t = tok_BxT.shape
    if noise_BxK is not None and self.cfg.feedback_layers and noise_BxK.shape[-1] > 1:
      if pick is None:
        raise ValueError("a token-feedback model (feedback_layers > 0) decodes with a `pick` readout")
      return self._decode_feedback(tok_BxT, n_new_B, cache, noise_BxK, tau_B, ctx_logits, pick)
    start = cache["len"]
    kv_len = start + n_new_B.astype(jnp.int32)
    x = self.embed(tok_BxT)
    pos = start[:, None] + jnp.arange(t)[None, :]
    if noise_BxK is not None:
      kk = noise_BxK.shape[-1]
      self._check_k(kk)
      hints = self.encode_hints(noise_BxK[:, None, :], tau_B)[:, 0]
      x = jnp.concatenate([x, hints.astype(x.dtype)], 1)
      pos = jnp.concatenate([pos, kv_len[:, None] - 1 + jnp.asarray(self.cfg.hint_offsets(kk))[None, :]], 1)
    attend = functools.partial(_decode_attend, start_B=start, kv_len_B=kv_len, pos_BxQ=pos, n_ctx=t,
                               impl=self.cfg.attention_impl)
    states = list(zip(cache["k"], cache["v"]))
    x, new_states = self._run(x, pos, attend, states, True)
    new_cache = {"k": [s[0] for s in new_states], "v": [s[1] for s in new_states], "len": kv_len}
    hint_logits = None
    if noise_BxK is not None:  # only the slot hints get the head (not the decision hints)
      hint_logits = self._logits(_slot_rows(self.cfg, x[:, t:], 1))
    return self._ctx_logits(x[:, :t], n_new_B, ctx_logits), hint_logits, new_cache

  def _decode_feedback(self, tok_BxT, n_new_B, cache, noise_BxK, tau_B, ctx_logits, pick):
    # `decode` for a token-feedback model: the trunk as usual; then the feedback blocks for the tokens and hint 1
    # together, and for hints 2..K one row at a time, each with the embedding of the token the slot before emitted.
    cfg = self.cfg
    b, t = tok_BxT.shape
    kk = noise_BxK.shape[-1]
    self._check_k(kk)
    start = cache["len"]
    kv_len = start + n_new_B.astype(jnp.int32)
    hints = self.encode_hints(noise_BxK[:, None, :], tau_B)[:, 0]
    x = jnp.concatenate([self.embed(tok_BxT), hints.astype(cfg.dtype)], 1)
    pos = jnp.concatenate([start[:, None] + jnp.arange(t)[None, :],
                           kv_len[:, None] - 1 + jnp.asarray(cfg.hint_offsets(kk))[None, :]], 1)
    if cfg.position == "learned":
      x = x + self.pos_embed(jnp.minimum(pos, cfg.max_len - 1)).astype(x.dtype)
    lo = cfg.num_layers - cfg.feedback_layers
    states = list(zip(cache["k"], cache["v"]))
    attend = functools.partial(_decode_attend, start_B=start, kv_len_B=kv_len, pos_BxQ=pos, n_ctx=t,
                               impl=cfg.attention_impl)
    x, trunk = self._blocks(x, pos, attend, states[:lo], True, 0, lo)
    fb_states = [(kv, (None, None)) for kv in states[lo:]]
    rows, logits, y = x[:, : t + 1], [], None
    for i in range(kk):
      if i:
        rows = _add_feedback(x[:, t + i: t + i + 1], self.embed(y)[:, None])
      n_ctx = t if i == 0 else 0
      p = pos[:, : t + 1] if i == 0 else pos[:, t + i: t + i + 1]
      attend = functools.partial(_feedback_attend, start_B=start, kv_len_B=kv_len, pos_BxQ=p, n_ctx=n_ctx,
                                 impl=cfg.attention_impl)
      out, fb_states = self._blocks(rows, p, attend, fb_states, True, lo, cfg.num_layers)
      if i == 0:
        ctx_x, out = out[:, :t], out[:, t:]
      logits.append(self._logits(out)[:, 0])
      y = pick(i, logits[-1])
    new_states = trunk + [kv for kv, _ in fb_states]
    new_cache = {"k": [s[0] for s in new_states], "v": [s[1] for s in new_states], "len": kv_len}
    return self._ctx_logits(ctx_x, n_new_B, ctx_logits), jnp.stack(logits, 1), new_cache

  def _ctx_logits(self, x_BxTxD, n_new_B, which: str):
    if which == "all":
      return self._logits(x_BxTxD)
    if which == "last":
      last = jnp.take_along_axis(x_BxTxD, (n_new_B - 1)[:, None, None].astype(jnp.int32), 1)
      return self._logits(last)[:, 0]
    return None

  def init_all(self, tok_BxN):
    """Touches every parameter (for `init`): the AR forward, plus the noise encoder of a push-forward LM."""
    out = self(tok_BxN)
    if self.cfg.is_pflm:
      b, n = tok_BxN.shape
      out = self.staircase(tok_BxN[:, : n - 1], jnp.zeros((b, n - 1, 1)), jnp.ones((b,)))
    return out
