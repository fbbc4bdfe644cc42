"""Data: tfds corpora (array_record, TF-free), tokenizers, and the grain input pipeline."""
from kforcing_jax.data.corpora import DataError, default_data_config, held_out_texts, prepare, text_source
from kforcing_jax.data.pipeline import make_dataset
from kforcing_jax.data.tokenizers import TokenizerError, build_tokenizer, load_tokenizer
