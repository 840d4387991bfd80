"""scratchlm: build a language model from scratch, end to end."""

__version__ = "0.1.0"
