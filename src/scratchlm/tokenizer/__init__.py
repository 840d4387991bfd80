"""The tokenizer: byte-level BPE with fixed special tokens and the ChatML template (bpe), and its CLI."""
