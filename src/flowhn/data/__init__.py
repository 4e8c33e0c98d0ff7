"""Data pipeline: sources (local files or a hub stream), tokenizer, packing, Lightning DataModule.

``conf/data/*.yaml`` instantiate :class:`LMDataModule`; ``prepare()`` returns the tokenizer,
and :func:`check_vocab` refuses a model vocabulary too small for it.
"""

from flowhn.data.datamodule import LMDataModule
from flowhn.data.sources import EMBEDDED_CORPUS, iter_documents, open_stream, resolve_sources
from flowhn.data.tokenizer import check_vocab, load_pretrained, train_bpe
from flowhn.data.windows import IGNORE_INDEX, PackedWindows, PaddedDocuments, TokenizedCorpus
from flowhn.errors import ConfigError

# The data pipeline's errors are the project's ConfigError; the alias names them where data
# code is the only context.
DataConfigError = ConfigError

__all__ = [
    "EMBEDDED_CORPUS", "IGNORE_INDEX", "ConfigError", "DataConfigError", "LMDataModule", "PackedWindows",
    "PaddedDocuments", "TokenizedCorpus", "check_vocab", "iter_documents", "load_pretrained", "open_stream",
    "resolve_sources", "train_bpe",
]
