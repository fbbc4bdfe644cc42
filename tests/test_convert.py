"""Reference checkpoint import: layout round trip, a numpy re-statement of the reference forward, errors, CLI."""
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kforcing_jax

from helpers import run_convert, tiny_config
from kforcing_jax.data.tokenizers import load_tokenizer
from kforcing_jax.models import KForcingLM, abstract_params, torch_import
from kforcing_jax import conversion
from kforcing_jax import workdir as checkpoint

# The reference's MLP is always 4 * hidden; a mask index inside the vocab exercises the -1000 logit.
CFG = tiny_config(mlp_dim=128, mask_index=5, k_max=4)


@pytest.fixture(scope="module")
def model_params():
  # Like helpers.random_params but without running init (eval_shape + numpy noise), to keep the file fast.
  abstract = nn.unbox(abstract_params(CFG))["params"]
  leaves, tree = jax.tree.flatten(abstract)
  rng = np.random.default_rng(3)
  leaves = [(1.0 if len(x.shape) == 1 else 0.0) + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
            for x in leaves]
  return KForcingLM(CFG), jax.tree.unflatten(tree, leaves)


def _ref_sd(params, cfg=CFG, prefix="backbone."):
  return torch_import.to_reference_state_dict(params, cfg, prefix=prefix)


def _stripped(params):
  return torch_import.strip_prefix({"state_dict": _ref_sd(params)})


def _reference_ar_logits(sd, tok, n_heads, mask_index):
  """The reference AR.forward_high_precision restated in numpy on its own state-dict layout (fp64)."""
  f = lambda k: np.asarray(sd[k], np.float64)
  ln = lambda x, w: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w
  gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
  x = f("vocab_embed.embedding")[tok]
  b, n, d = x.shape
  dh = d // n_heads
  ang = np.arange(n)[:, None] * f("rotary_emb.inv_freq")[None, :]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
  half = lambda t: np.concatenate([-t[..., dh // 2:], t[..., : dh // 2]], -1)
  rot = lambda t: t * cos[None, :, None] + half(t) * sin[None, :, None]
  causal = np.tril(np.ones((n, n), bool))
  nblocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  for i in range(nblocks):
    p = f"blocks.{i}."
    qkv = (ln(x, f(p + "norm1.weight")) @ f(p + "attn_qkv.weight").T).reshape(b, n, 3, n_heads, dh)
    q, k, v = rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2]
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
    s = np.where(causal, s, -np.inf)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", a, v).reshape(b, n, d)
    x = x + o @ f(p + "attn_out.weight").T
    y = gelu(ln(x, f(p + "norm2.weight")) @ f(p + "mlp.0.weight").T + f(p + "mlp.0.bias"))
    x = x + y @ f(p + "mlp.2.weight").T + f(p + "mlp.2.bias")
  out = ln(x, f("output_layer.norm_final.weight")) @ f("output_layer.linear.weight").T + f("output_layer.linear.bias")
  out[..., mask_index] = -1000.0
  return out


def test_layout_round_trip_is_exact(model_params):
  _, params = model_params
  sd = _stripped(params)
  assert all(not k.startswith("backbone.") for k in sd)
  cfg = torch_import.infer_config(sd, "pflm", k_max=CFG.k_max, mask_index=CFG.mask_index, max_len=CFG.max_len)
  assert cfg == CFG
  back = torch_import.from_reference_state_dict(sd, cfg)
  jax.tree.map(np.testing.assert_array_equal, back, params)
  ar_cfg = torch_import.infer_config({k: v for k, v in sd.items() if not k.startswith("noise_encoder.")}, "ar",
                                     mask_index=CFG.mask_index, max_len=CFG.max_len)
  assert ar_cfg == CFG.replace(k_max=0)


def test_reference_layout_means_the_same_model(model_params):
  # Guards the (three h d) split, the attn_out column order and the kernel transposes: a self-consistent but wrong
  # layout would round-trip yet disagree with the reference's own arithmetic.
  model, params = model_params
  tok = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 11))
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(tok)))
  ref = _reference_ar_logits(_stripped(params), tok, CFG.num_heads, CFG.mask_index)
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def _break(sd, how):
  sd = dict(sd)
  if how == "missing":
    del sd["blocks.1.mlp.2.bias"]
  elif how == "extra":
    sd["blocks.0.attn_qkv.bias"] = np.zeros(3 * CFG.d_model, np.float32)
  elif how == "shape":
    sd["blocks.0.attn_out.weight"] = np.zeros((CFG.d_model, CFG.d_model + 2), np.float32)
  elif how == "rope":
    sd["rotary_emb.inv_freq"] = torch_import.rope_inv_freq(CFG.head_dim, 500.0)
  return sd


@pytest.mark.parametrize("how,needle", [("missing", "'blocks.1.mlp.2.bias'"), ("extra", "'blocks.0.attn_qkv.bias'"),
                                        ("shape", "'blocks.0.attn_out.weight'"), ("rope", "'rotary_emb.inv_freq'")])
def test_bad_tensor_is_one_line_naming_it(model_params, how, needle):
  sd = _break(_stripped(model_params[1]), how)
  with pytest.raises(torch_import.ConversionError) as e:
    torch_import.from_reference_state_dict(sd, CFG)
  assert needle in str(e.value) and "\n" not in str(e.value)


def test_ar_checkpoint_rejects_noise_encoder_keys(model_params):
  with pytest.raises(torch_import.ConversionError, match="unexpected key 'noise_encoder"):
    torch_import.from_reference_state_dict(_stripped(model_params[1]), CFG.replace(k_max=0))


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
  # A BERT-style vocab of exactly CFG.vocab_size ids with [MASK] at CFG.mask_index.
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "[MASK]"] + [f"w{i}" for i in range(CFG.vocab_size - 6)]
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(words) + "\n")
  return str(path)


def test_tokenizer_must_match_checkpoint_vocab(vocab_file):
  with pytest.raises(torch_import.ConversionError, match="tokenizer 'gpt2' has 50258 ids"):
    conversion.resolve_tokenizer("gpt2", CFG.vocab_size)
  tok, defaults = conversion.resolve_tokenizer(vocab_file, CFG.vocab_size)
  assert tok.vocab_size == CFG.vocab_size and defaults["mask_index"] == CFG.mask_index == tok.mask_index
  with pytest.raises(torch_import.ConversionError, match=f"has {CFG.vocab_size} ids"):
    conversion.resolve_tokenizer(vocab_file, CFG.vocab_size + 1)
  # A vocabulary no tokenizer is known for is refused (the workdir could not be loaded) rather than written.
  with pytest.raises(torch_import.ConversionError, match="--tokenizer"):
    conversion.resolve_tokenizer(None, CFG.vocab_size)
  with pytest.raises(torch_import.ConversionError, match="unknown tokenizer"):
    conversion.resolve_tokenizer("t5", CFG.vocab_size)


class _Hparams(dict):
  """Stands for Lightning's pickled hyper-parameters; unpickling it for real would run __setstate__."""
  ran = []

  def __setstate__(self, state):
    _Hparams.ran.append(state)


def test_convert_torch_file_restores_to_identical_logits(tmp_path, model_params, vocab_file):
  torch = pytest.importorskip("torch")
  model, params = model_params
  path = str(tmp_path / "ref.ckpt")
  # A Lightning-style dict: "backbone."-prefixed state dict beside training bookkeeping.
  hparams = _Hparams(lr=1e-3)
  hparams.__dict__["tag"] = "x"
  torch.save({"state_dict": {k: torch.tensor(v) for k, v in _ref_sd(params).items()}, "global_step": 3,
              "hyper_parameters": hparams}, path)
  workdir = str(tmp_path / "out")
  conversion.convert(path, "pflm", workdir, tokenizer=vocab_file, k_max=CFG.k_max, max_len=CFG.max_len)
  step, out = checkpoint.restore(workdir)
  assert step == 0 and out["meta"]["model"] == CFG.to_dict() and out["meta"]["kind"] == "pflm"
  assert load_tokenizer(workdir, out["meta"]["tokenizer"]).mask_index == CFG.mask_index
  assert not _Hparams.ran  # the pickled object was replaced by an inert stub
  restored = {"params": out["params"]}
  rng = np.random.default_rng(1)
  tok = jnp.asarray(rng.integers(0, CFG.vocab_size, (2, 12)))
  noise = jnp.asarray(rng.random((2, 9, 3), np.float32))
  tau = jnp.ones((2,))
  ar = jax.jit(model.apply)
  np.testing.assert_array_equal(ar(restored, tok), ar({"params": params}, tok))
  stair = jax.jit(lambda p: model.apply(p, tok[:, :9], noise, tau, method=model.staircase))
  np.testing.assert_array_equal(stair(restored), stair({"params": params}))
  with pytest.raises(torch_import.ConversionError, match="not empty"):
    conversion.convert(path, "pflm", workdir, mask_index=CFG.mask_index)


def test_convert_ar_from_npz_without_torch(tmp_path, capsys, model_params, vocab_file):
  model, params = model_params
  # A PFLM file converted as the AR teacher: the noise encoder is dropped only when asked to.
  np.savez(tmp_path / "pf.npz", **_ref_sd(params))
  code, err = run_convert(capsys, "--reference_ckpt", str(tmp_path / "pf.npz"), "--kind", "ar", "--workdir",
                        str(tmp_path / "ar"), "--tokenizer", vocab_file, "--max_len", str(CFG.max_len),
                        "--ignore_keys", r"noise_encoder\..*")
  assert code is None, err
  _, out = checkpoint.restore(str(tmp_path / "ar"))
  assert out["meta"]["model"] == CFG.replace(k_max=0).to_dict() and out["meta"]["tokenizer"]["kind"] == "bert"
  assert kforcing_jax.load(str(tmp_path / "ar")).config == CFG.replace(k_max=0)
  assert len(out["meta"]["ignored_keys"]) == 8 and all("noise_encoder" in k for k in out["meta"]["ignored_keys"])
  tok = jnp.asarray(np.random.default_rng(2).integers(0, CFG.vocab_size, (2, 10)))
  ar = jax.jit(KForcingLM(CFG.replace(k_max=0)).apply)
  np.testing.assert_array_equal(ar({"params": out["params"]}, tok), jax.jit(model.apply)({"params": params}, tok))


def test_cli_bad_input_exits_2(tmp_path, capsys, model_params, vocab_file):
  np.savez(tmp_path / "ref.npz", **_ref_sd(model_params[1]))
  (tmp_path / "garbage.npz").write_bytes(np.random.default_rng(0).bytes(4096))
  (tmp_path / "empty.npz").write_bytes(b"")
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("x")
  ref = str(tmp_path / "ref.npz")
  cases = [(["--reference_ckpt", str(tmp_path / "nope.ckpt"), "--kind", "ar", "--workdir", str(tmp_path / "o")],
            "no such checkpoint"),
           (["--reference_ckpt", ref, "--kind", "mdlm", "--workdir", str(tmp_path / "o")], "unknown kind"),
           (["--reference_ckpt", ref, "--kind", "pflm", "--workdir", str(tmp_path / "full")], "not empty"),
           (["--reference_ckpt", ref, "--kind", "pflm", "--workdir", str(tmp_path / "o"), "--tokenizer", "gpt2"],
            "50258 ids"),
           (["--reference_ckpt", ref, "--kind", "ar", "--workdir", str(tmp_path / "o"), "--tokenizer", vocab_file],
            "unexpected key"),
           # Issue 12 cases 14, 15 and the converter writing an unloadable workdir.
           (["--reference_ckpt", str(tmp_path / "garbage.npz"), "--kind", "ar", "--workdir", str(tmp_path / "o")],
            "cannot read"),
           (["--reference_ckpt", str(tmp_path / "empty.npz"), "--kind", "ar", "--workdir", str(tmp_path / "o")],
            "cannot read"),
           (["--reference_ckpt", ref, "--kind", "pflm", "--workdir", str(tmp_path / "o")], "--tokenizer"),
           (["--reference_ckpt", ref, "--kind", "pflm", "--workdir", str(tmp_path / "o"), "--tokenizer", vocab_file,
             "--mask_index", "7"], "differs from the tokenizer's mask id"),
           (["--kind", "ar", "--workdir", str(tmp_path / "o")], "--reference_ckpt is required")]
  for args, needle in cases:
    code, err = run_convert(capsys, *args)
    assert code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1, (args, err)
  assert (tmp_path / "full" / "keep.txt").read_text() == "x"
  assert not (tmp_path / "o").exists()


def test_cli_flag_error_exits_2_and_torch_stays_optional():
  code = ("import sys; from absl import app; from kforcing_jax import convert; "
          "assert 'torch' not in sys.modules, 'torch imported at module level'; "
          "app.run(convert.main, argv=['convert', '--k_max', 'four'], flags_parser=convert._parse_flags)")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "error:" in r.stderr and "--k_max" in r.stderr, r.stderr[-500:]
