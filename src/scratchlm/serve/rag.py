"""`scratchlm serve RUN --rag-db FILE`: answer chat requests from your documents. The last user message is the
question; the top chunks of the rag database (dense + BM25, as `scratchlm rag ask` does) go into that turn
through the same template (`rag.answer.build_messages`), shortened until the prompt fits the context, and the
response names the chunks it was given (`sources`, citation keys `source#chunk`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable


class StoreUnavailable(RuntimeError):
    """The rag database could not be read just now (locked, busy, damaged): the request gets a 503."""


class RagContext:
    """Retrieval for the server: one database, the embedder that built it, one connection per worker thread."""

    def __init__(self, db: str | Path, k: int = 3, mode: str = "hybrid", timeout: float = 5.0) -> None:
        from scratchlm.rag.embedders import embedder_spec, get_embedder
        from scratchlm.rag.store import VectorStore

        self.db, self.k, self.mode = Path(db), k, mode
        self.timeout = timeout  # seconds a read waits on a locked database before the request gets a 503
        if not self.db.exists():
            raise FileNotFoundError(f"--rag-db {db}: no such rag database (build one with `scratchlm rag index DOCS "
                                    f"--db {db}`)")
        with VectorStore(self.db, create=False) as store:  # fails here, at startup, on a corrupt or foreign file
            self.embedder = get_embedder(embedder_spec(store.embedder, db))
            self.chunks = store.count()
        self._local = threading.local()
        self._embed_lock = threading.Lock()  # the embedders are not documented as thread-safe

    def _retriever(self) -> Any:
        # sqlite connections belong to the thread that opened them: one store (and BM25 index) per thread
        r = getattr(self._local, "retriever", None)
        if r is None:
            from scratchlm.rag.retrieve import Retriever
            from scratchlm.rag.store import VectorStore

            r = self._local.retriever = Retriever(VectorStore(self.db, create=False, timeout=self.timeout),
                                                      self.embedder)
        return r

    def augment(self, messages: list[dict], fits: Callable[[list[dict]], bool]) -> tuple[list[dict], list[str]]:
        """(messages with the last user turn carrying the retrieved context, the citation keys given). Messages
        whose last turn is not the user's are returned unchanged."""
        from scratchlm.rag.answer import build_messages

        if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
            return messages, []
        import sqlean

        question = messages[-1]["content"]
        try:
            with self._embed_lock:
                hits = self._retriever().search(question, k=self.k, mode=self.mode)
        except (sqlean.Error, ValueError) as e:  # the store's errors (ValueError: VectorStore explained them)
            self._local.retriever = None  # reopen on the next request: this connection may be in a bad state
            raise StoreUnavailable(f"the rag database {self.db.name} cannot be read just now ({e}); retry") from e
        turn, refs = build_messages(question, hits, fit=lambda m: fits(messages[:-1] + m))
        return messages[:-1] + turn, refs
