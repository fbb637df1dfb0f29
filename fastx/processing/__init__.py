"""What turns inputs into tensors and back: tokenizers, chat templates, streaming detokenization, images."""

from fastx.processing.auto_tokenizer import AutoTokenizer
from fastx.processing.image_processor import AutoImageProcessor
from fastx.processing.tokenizer import BatchEncoding, Tokenizer

__all__ = ["AutoTokenizer", "AutoImageProcessor", "BatchEncoding", "Tokenizer"]
