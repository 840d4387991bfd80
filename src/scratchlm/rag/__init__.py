"""Retrieval-augmented answers over your own documents.

load + chunk (chunking.py) → embed (embedders.py) → store in one SQLite file with sqlite-vec (store.py)
→ retrieve by cosine / L2 / L1, optionally fused with BM25 by reciprocal rank (retrieve.py, the exact
maths in similarity.py) → answer with citations through the chat template and the offline engine front, engine.offline.LLM (answer.py).
`scratchlm rag ...` is registered by cli.py, which imports nothing heavy until a command runs.
"""
