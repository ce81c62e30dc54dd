"""Training data, framework-free: tokenizers, corpus sources, and the deterministic batch sampler."""
from locmoe.data.corpus import Corpus, DataError, load_corpus
from locmoe.data.sampler import BatchSampler
from locmoe.data.tokenizer import ByteTokenizer, load_tokenizer

__all__ = ["BatchSampler", "ByteTokenizer", "Corpus", "DataError", "load_corpus", "load_tokenizer"]
