"""Training data, framework-free: tokenizers, corpus sources, the indexed dataset format and the deterministic
batch sampler."""

from locmoe.data.corpus import Corpus, load_corpus
from locmoe.data.errors import DataError
from locmoe.data.sampler import BatchSampler
from locmoe.data.stream import TokenStream
from locmoe.data.tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["BatchSampler", "ByteTokenizer", "Corpus", "DataError", "TokenStream", "load_corpus", "load_tokenizer"]
