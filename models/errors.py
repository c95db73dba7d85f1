"""Exceptions raised by `models/` for bad input, each naming the problem."""


class ModelFileError(ValueError):
    """A model file or directory is missing, truncated or unreadable."""


class HashMismatchError(ValueError):
    """A downloaded or assembled file does not have the expected sha256."""


class UnknownArchitectureError(ValueError):
    """The checkpoint declares an architecture this package does not implement."""


class IncompatibleModelsError(ValueError):
    """A draft and a target model do not share a tokenizer or vocabulary."""


class PromptTooLongError(ValueError):
    """Tokens would be written past the end of a fixed-capacity KV cache."""
