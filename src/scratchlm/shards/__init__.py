"""Token shards: prepare text into memory-mapped shards, write them, read them as datasets."""
