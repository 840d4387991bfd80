"""Serving a run: the OpenAI-compatible HTTP server (`scratchlm serve`), the web chat page it ships at `/`,
and the terminal chat (`scratchlm chat`). All three sit on `scratchlm.engine.LLMEngine` and share the
prompt building of `prompt.py` and the `<think>` splitting of `reasoning.py`."""
