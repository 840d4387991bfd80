"""`scratchlm prepare`: text/chat files → cleaned, deduplicated, mixed, tokenised shards.

The stream, per input, in batches (memory stays flat whatever the input size):
    read lines → validate (file:line errors) → clean (NFKC, control chars) → length filter
    → exact dedup (hash of the cleaned item) → encode (Rust, all cores, in a worker thread so that
    the Python steps of the next batch overlap it) → near-dup filter (MinHash LSH on token shingles)
    → train or val split (by the item's hash) → shards (`ShardWriter`).
Pretrain documents end with `<|endoftext|>`; chat kinds are ChatML via `Tokenizer.encode_chat`.

Control-token strings in pretraining text (`<|im_start|>…<|im_end|>`, as in MiniMind's pretrain_hq.jsonl)
are plain text by default, like everywhere else; `--special-tokens-in-text` parses them as the tokens.
Documents holding them are counted either way, and without the option prepare warns with the count.
Chat kinds never parse them: a message that contains "<|im_end|>" cannot end its turn.

Mixing (`--mix a.jsonl:0.7 b.jsonl:0.3`): weights are shares of the output's *tokens*. The output
has as many tokens as all inputs together after cleaning (T); input i contributes w_i/Σw · T tokens:
every one of its items `floor(r)` times (r = target / its tokens) plus a seeded random subset for
the fraction, so small inputs are upsampled by repetition and large ones downsampled. The mixed
items are then shuffled (seeded). Without --mix, inputs are concatenated in order, unshuffled.
Validation (`--val-frac F`): an item goes to val/ when its hash says so — the same text always lands
in the same split; val items are written once each, never repeated by mixing.
Near-dup removal is on by default for pretrain (threshold 0.8) and off for chat kinds, where many
legitimate items share a template or a long system prompt; `--near-dup-threshold T` turns it on.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scratchlm.data.clean import NORMALIZE_FORMS, clean_messages, clean_text, dedup_key, in_val_split
from scratchlm.shards.sources import BUILTIN, KINDS, DataError, Source, iter_raw, parse_record, resolve_source
from scratchlm.tokenizer.bpe import SPECIAL_STRINGS

if TYPE_CHECKING:  # numpy and the shard modules load when data is prepared, not on `scratchlm --help`
    import numpy as np

    from scratchlm.data.hashset import Int64Set
    from scratchlm.data.neardup import NearDupIndex
    from scratchlm.shards.writer import ShardWriter

DEFAULT_SHARD_TOKENS = 50_000_000
DEFAULT_NEAR_DUP = 0.8
BATCH_CHARS = 500_000  # per encode_batch call: enough for Rust to use all cores, small enough to overlap
BATCH_ITEMS = 8192
COUNT_KEYS = (
    "read", "kept", "dropped_empty", "dropped_too_short", "dropped_too_long",
    "exact_dups", "near_dups", "bad_lines_skipped", "val", "control_string_docs", "control_strings",
)
CONTROL_COUNT_KEYS = ("control_string_docs", "control_strings")  # pretrain only
SPECIAL_TOKENS_OPTION = "--special-tokens-in-text"
_CONTROL_RE = re.compile("|".join(map(re.escape, SPECIAL_STRINGS)))


@dataclass
class Encoded:
    """One encoded batch: documents back to back (items of 1 doc, or 2 for preference pairs)."""

    tokens: np.ndarray  # [n_tokens] uint32
    doc_lens: np.ndarray  # [n_docs] int64
    mask: np.ndarray | None  # [n_tokens] uint8 (sft / preference)
    side: list[str] | None  # [n_docs] JSON lines (prompt)
    docs_per_item: int

    def select(self, items: np.ndarray) -> "Encoded":
        """The sub-batch of the items where `items` (bool [n_items]) is True."""
        import numpy as np

        docs = np.repeat(items, self.docs_per_item)
        toks = np.repeat(docs, self.doc_lens)
        side = None if self.side is None else list(itertools.compress(self.side, docs.tolist()))
        return Encoded(self.tokens[toks], self.doc_lens[docs], None if self.mask is None else self.mask[toks],
                       side, self.docs_per_item)

    def item_starts(self) -> np.ndarray:
        """[n_items + 1] token offsets of the items."""
        import numpy as np

        ends = np.cumsum(self.doc_lens)[self.docs_per_item - 1 :: self.docs_per_item]
        return np.concatenate([[0], ends]).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Reading, cleaning, exact dedup (Python; runs while the previous batch is being encoded)


def _chat(item: Any) -> tuple[list[dict], list[dict] | None]:
    """An sft item's (messages, tools): a plain chat is a list, a chat with tool schemas a dict."""
    return (item["messages"], item["tools"]) if isinstance(item, dict) else (item, None)


def _item_chars(kind: str, item: Any) -> int:
    """Length used by --min-chars/--max-chars: the text, or all message contents (+ answer)."""
    if kind == "pretrain":
        return len(item)
    if kind == "sft":
        return sum(len(m.get("content") or "") for m in _chat(item)[0])
    if kind == "preference":
        return sum(len(m["content"]) for m in item["chosen"] + item["rejected"])
    return sum(len(m["content"]) for m in item["prompt"]) + len(item["answer"])


def _is_empty(kind: str, item: Any) -> bool:
    """Nothing to learn from: empty text, no assistant turn (sft/preference) or an empty answer."""
    if kind == "pretrain":
        return not item
    if kind == "sft":
        return not any(m["role"] == "assistant" and m.get("weight", 1) and (m.get("content") or m.get("tool_calls"))
                       for m in _chat(item)[0])
    if kind == "preference":
        return any(not any(m["role"] == "assistant" and m["content"] for m in item[k]) for k in ("chosen", "rejected"))
    return not item["answer"].strip() or not any(m["content"] for m in item["prompt"])


def _clean_item(kind: str, item: Any, normalize: str) -> Any:
    """The item with its text(s) cleaned; pretrain text is also stripped of surrounding whitespace."""
    if kind == "pretrain":
        return clean_text(item, normalize).strip()
    if kind == "sft":
        msgs, tools = _chat(item)
        return clean_messages(msgs, normalize) if tools is None else {"messages": clean_messages(msgs, normalize),
                                                                      "tools": tools}
    if kind == "preference":
        return {k: clean_messages(item[k], normalize) for k in ("chosen", "rejected")}
    return {**item, "prompt": clean_messages(item["prompt"], normalize), "answer": clean_text(item["answer"], normalize)}


def count_control_strings(text: str) -> int:
    """How many control-token strings (`<|im_start|>`, `<|endoftext|>`, ...) `text` holds."""
    return len(_CONTROL_RE.findall(text)) if "<|" in text else 0  # the substring test keeps the common case cheap


def _parse_fast(kind: str, src: Source, line: int, payload: Any) -> Any:
    """parse_record with a fast path for the common pretrain line (errors still come from parse_record)."""
    if kind == "pretrain":
        if isinstance(payload, str):
            return payload
        if isinstance(payload, bytes):
            try:
                rec = json.loads(payload.decode("utf-8"))  # str input skips json's encoding sniffing
            except ValueError:
                rec = None
            if type(rec) is dict and type(rec.get("text")) is str:
                return rec["text"]
    return parse_record(kind, src, line, payload)


def _batches(kind: str, src: Source, opts: "_Options", counts: Counter, seen: Int64Set | None,
             progress: Any) -> Iterator[tuple[list[Any], list[int]]]:
    """Yield (items, keys) batches of cleaned, length-filtered, exactly-deduplicated items.

    keys are the items' deterministic hashes when a val split is asked for (else 0s).
    """
    items: list[Any] = []
    hashes: list[int] = []
    chars = 0
    nbytes = 0
    for line, payload, n in iter_raw(src):
        counts["read"] += 1
        counts["bytes_read"] += n
        nbytes += n
        try:
            item = _parse_fast(kind, src, line, payload)
        except DataError:
            if not opts.skip_bad:
                raise
            counts["bad_lines_skipped"] += 1
            continue
        item = _clean_item(kind, item, opts.normalize)
        if _is_empty(kind, item):
            counts["dropped_empty"] += 1
            continue
        size = _item_chars(kind, item)
        if size < opts.min_chars:
            counts["dropped_too_short"] += 1
            continue
        if opts.max_chars and size > opts.max_chars:
            counts["dropped_too_long"] += 1
            continue
        if seen is not None:
            # Python's 64-bit str hash is ~50x cheaper than blake2b and stable within the run.
            hashes.append(hash(item if kind == "pretrain" else json.dumps(item, ensure_ascii=False, sort_keys=True)))
        items.append(item)
        chars += size
        if chars >= BATCH_CHARS or len(items) >= BATCH_ITEMS:
            progress.update(nbytes)
            nbytes = 0
            batch = _dedup_batch(kind, items, hashes, seen, opts, counts)
            if batch[0]:  # a batch of duplicates only is empty now
                yield batch
            items, hashes, chars = [], [], 0
    progress.update(nbytes)
    if items:
        batch = _dedup_batch(kind, items, hashes, seen, opts, counts)
        if batch[0]:
            yield batch


def _dedup_batch(kind: str, items: list[Any], hashes: list[int], seen: Int64Set | None, opts: "_Options",
                 counts: Counter) -> tuple[list[Any], list[int]]:
    """The batch without exact duplicates (of earlier items, in this batch or before), and the items' split keys."""
    import numpy as np

    if seen is not None and items:
        h = np.array(hashes, dtype=np.int64)
        first = np.zeros(len(h), dtype=bool)
        first[np.unique(h, return_index=True)[1]] = True  # the first of equal items in the batch stays
        keep = first & ~seen.contains(h)
        seen.add(h[keep])
        counts["exact_dups"] += int(len(h) - keep.sum())
        if not keep.all():
            items = list(itertools.compress(items, keep.tolist()))
    if kind == "pretrain":
        for item in items:
            n_control = count_control_strings(item)
            if n_control:
                counts["control_string_docs"] += 1
                counts["control_strings"] += n_control
    return items, [dedup_key(item) for item in items] if opts.val_frac > 0 else [0] * len(items)


# ------------------------------------------------------------------------------------------------
# Encoding (the worker thread: Rust releases the GIL)


def _encode(kind: str, tok: Any, items: list[Any], special_tokens_in_text: bool = False) -> Encoded:
    """Token ids (+ masks / side lines) of a batch of cleaned items."""
    import numpy as np

    if kind == "pretrain":
        ids = tok.encode_batch(items, allow_special=special_tokens_in_text)
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.uint32, count=int(lens.sum()))
        # Every document ends with <|endoftext|>: insert one after each document's last token.
        tokens = np.insert(flat, np.cumsum(lens), np.uint32(tok.endoftext_id))
        return Encoded(tokens, lens + 1, None, None, 1)
    if kind == "prompt":
        ids = [tok.encode_chat(it["prompt"], add_generation_prompt=True)[0] for it in items]
        side = [json.dumps({"answer": it["answer"], "columns": it["columns"]}, ensure_ascii=False) for it in items]
        lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        return Encoded(np.fromiter(itertools.chain.from_iterable(ids), np.uint32, int(lens.sum())), lens, None, side, 1)
    convs = [_chat(it) for it in items] if kind == "sft" else \
        [(c, None) for it in items for c in (it["chosen"], it["rejected"])]
    pairs = [tok.encode_chat(msgs, tools=tools) for msgs, tools in convs]
    lens = np.fromiter((len(p[0]) for p in pairs), dtype=np.int64, count=len(pairs))
    n = int(lens.sum())
    tokens = np.fromiter(itertools.chain.from_iterable(p[0] for p in pairs), np.uint32, n)
    mask = np.fromiter(itertools.chain.from_iterable(p[1] for p in pairs), np.uint8, n)
    return Encoded(tokens, lens, mask, None, 1 if kind == "sft" else 2)


# ------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Options:
    skip_bad: bool
    min_chars: int
    max_chars: int
    normalize: str
    val_frac: float
    special_tokens_in_text: bool = False


def tokenizer_hash(path: str | Path) -> str:
    """sha256 of a tokenizer.json (or of the one in a folder): what a dataset's meta.json records."""
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _load_tokenizer(path: str | Path) -> tuple[Any, str]:
    """The project Tokenizer and the sha256 of its tokenizer.json."""
    from scratchlm.tokenizer.bpe import Tokenizer

    return Tokenizer.load(path), tokenizer_hash(path)


def _progress(total: int | None, enabled: bool) -> Any:
    """A progress bar over input bytes (shows MB/s); plain lines without a terminal; a no-op when disabled."""
    from scratchlm.progress import progress

    return progress(total, desc="prepare", unit="B", unit_scale=True, enabled=enabled)


def parse_mix(specs: Sequence[str]) -> list[tuple[str, float]]:
    """`["a.jsonl:0.7", "builtin:0.3"]` → [(path, weight)]; the weight follows the last colon."""
    out = []
    for spec in specs:
        path, sep, w = str(spec).rpartition(":")
        try:
            weight = float(w)
        except ValueError:
            weight = -1.0
        if not sep or not path or not weight > 0 or weight == float("inf"):
            raise ValueError(f"--mix {spec!r}: expected FILE:WEIGHT with a positive weight, e.g. a.jsonl:0.7")
        out.append((path, weight))
    return out


def prepare(
    kind: str,
    tokenizer: str | Path,
    inputs: Sequence[str | Path] | None,
    out: str | Path,
    *,
    mix: Sequence[tuple[str | Path, float]] | None = None,
    skip_bad: bool = False,
    min_chars: int = 0,
    max_chars: int = 0,
    dedup: bool = True,
    near_dup_threshold: float | None = None,
    normalize: str = "NFKC",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_frac: float = 0.0,
    seed: int = 0,
    progress: bool = False,
    special_tokens_in_text: bool = False,
) -> dict:
    """Prepare a dataset folder from input files; returns its meta.json as a dict (counts included).

    `inputs` (or `mix`, as (path, weight) pairs; not both) are files or "builtin"; for pretrain, no
    inputs means the built-in corpus. `near_dup_threshold` None = 0.8 for pretrain, off otherwise;
    0 = off. `max_chars` 0 = no limit. `dedup=False` turns off exact and near-dup removal.
    `special_tokens_in_text` (pretrain only): control-token strings in the text become those tokens.
    """
    from scratchlm.shards.datasets import open_shards
    from scratchlm.data.hashset import Int64Set
    from scratchlm.data.neardup import NearDupIndex
    from scratchlm.shards.writer import ShardWriter, new_run_id, remove_stale

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not allowed; choose one of: {', '.join(KINDS)}")
    if normalize not in NORMALIZE_FORMS:
        raise ValueError(f"normalize={normalize!r} is not allowed; choose one of: {', '.join(NORMALIZE_FORMS)}")
    if not 0.0 <= val_frac < 1.0:
        raise ValueError(f"val_frac={val_frac} must be in [0, 1)")
    if min_chars < 0 or max_chars < 0 or (max_chars and max_chars < min_chars):
        raise ValueError(f"bad length limits: min_chars={min_chars}, max_chars={max_chars} (0 = no max)")
    if special_tokens_in_text and kind != "pretrain":
        raise ValueError(
            f"special_tokens_in_text ({SPECIAL_TOKENS_OPTION}) is for kind 'pretrain' only: in {kind!r} data the "
            "chat template writes the markers, and message text that looks like one must stay text"
        )
    if inputs and mix:
        raise ValueError("give inputs either as --input (concatenated) or as --mix FILE:WEIGHT, not both")
    if near_dup_threshold is None:
        near_dup_threshold = DEFAULT_NEAR_DUP if kind == "pretrain" else 0.0
    if not 0.0 <= near_dup_threshold < 1.0:
        raise ValueError(f"near_dup_threshold={near_dup_threshold} must be in (0, 1), or 0 for off")
    specs: list[tuple[str | Path, float | None]] = (
        [(p, float(w)) for p, w in mix] if mix else [(p, None) for p in (inputs or [])]
    )
    if not specs:
        if kind != "pretrain":
            raise ValueError(f"kind {kind!r} needs --input files (the built-in corpus is pretrain text)")
        specs = [(BUILTIN, None)]
    sources = [resolve_source(p) for p, _ in specs]
    for s in sources:
        if kind != "pretrain" and s.format != "jsonl":
            raise DataError(f"{s.path}: kind {kind!r} reads .jsonl only (.txt/.parquet are pretrain text)")
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"an input is given twice: {', '.join(names)}")

    tok, tok_hash = _load_tokenizer(tokenizer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out, keep=_current_run(out))  # leftovers of a killed run; the current dataset stays

    opts = _Options(skip_bad, min_chars, max_chars, normalize, val_frac, special_tokens_in_text)
    run_id = new_run_id()
    with_mask, with_side = kind in ("sft", "preference"), kind == "prompt"
    vocab = tok.vocab_size

    def writer(path: Path) -> ShardWriter:
        return ShardWriter(path, kind, vocab, shard_tokens, with_mask, with_side, run_id)

    seen = Int64Set() if dedup else None  # 8 bytes per kept item: the state that grows with the input
    near = NearDupIndex(near_dup_threshold, seed=seed) if dedup and near_dup_threshold > 0 else None
    per_input: dict[str, Counter] = {}
    staging = out / f".staging-{run_id}"
    t0 = time.perf_counter()
    bar = _progress(None if any(s.gzipped or s.format == "parquet" for s in sources)
                    else sum(s.size_bytes for s in sources), progress)
    try:
        with writer(out / "val") if val_frac > 0 else _NoWriter() as val_w:
            stage_ws: list[ShardWriter] = []
            with (_NoWriter() if mix else writer(out)) as main_w:
                for i, src in enumerate(sources):
                    counts = per_input.setdefault(src.name, Counter({k: 0 for k in COUNT_KEYS}))
                    train_w = writer(staging / str(i)) if mix else main_w
                    _run_source(kind, src, tok, opts, counts, seen, near, train_w, val_w, bar, t0)
                    if mix:
                        train_w.finish({})
                        stage_ws.append(train_w)
                bar.close()
                total = _sum_counts(per_input)
                if kind == "pretrain" and not special_tokens_in_text and total["control_string_docs"]:
                    # stderr, after the bar is gone: shown with --quiet too, and kept out of piped stdout
                    print(control_string_warning(total), file=sys.stderr, flush=True)
                meta = {
                    "tokenizer_hash": tok_hash,
                    "tokenizer": str(tokenizer),
                    "inputs": [{"name": s.name, "path": str(s.path), "weight": w} for s, (_, w) in zip(sources, specs)],
                    "counts": {**total, "per_input": {k: dict(v) for k, v in per_input.items()}},
                    "settings": {"dedup": dedup, "near_dup_threshold": near_dup_threshold if near else 0.0,
                                 "min_chars": min_chars, "max_chars": max_chars, "normalize": normalize,
                                 "val_frac": val_frac, "seed": seed, "shard_tokens": shard_tokens,
                                 "special_tokens_in_text": special_tokens_in_text},
                    "seconds": round(time.perf_counter() - t0, 3),
                    "input_bytes": sum(c["bytes_read"] for c in per_input.values()),  # as read (uncompressed)
                }
                if mix:
                    with writer(out) as main_w:
                        meta["mix"] = _mix([open_shards(staging / str(i)) for i in range(len(sources))],
                                           names, [w for _, w in specs], main_w, seed)
                        return _publish(main_w, val_w, meta, out)
                return _publish(main_w, val_w, meta, out)
    finally:
        bar.close()
        shutil.rmtree(staging, ignore_errors=True)


def control_string_warning(counts: dict) -> str:
    """The warning for pretraining text that holds control-token strings while they are kept as text."""
    checked = counts["kept"] + counts["near_dups"] + counts["val"]  # every document that reached the encoder
    return (f"warning: {counts['control_string_docs']:,} of {checked:,} documents "
            f"contain control-token strings ({counts['control_strings']:,} in all, e.g. <|im_start|>, <|im_end|>, "
            f"<|endoftext|>); they were tokenised as plain text. If they mark turns or document ends (MiniMind's "
            f"pretrain_hq.jsonl format), prepare again with {SPECIAL_TOKENS_OPTION} to make them the tokens.")


def _current_run(out: Path) -> str | None:
    """The data folder the dataset in `out` uses now (None if there is no readable meta.json)."""
    try:
        return json.loads((out / "meta.json").read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError):
        return None


class _NoWriter:
    """Stands in for a writer that is not needed (no val split / mixed output written later)."""

    def __enter__(self) -> "_NoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


def _publish(main_w: ShardWriter, val_w: Any, meta: dict, out: Path) -> dict:
    """Finish val/ first, then the main meta.json (which points at val/), then drop a stale val/."""
    from scratchlm.shards.writer import ShardWriter

    parent = {"parent_run": main_w.run_name}
    if isinstance(val_w, ShardWriter):
        val_meta = val_w.finish({**parent, "counts": {"kept": val_w.n_docs // (2 if main_w.kind == "preference" else 1)}})
        meta["val"] = "val"
        meta["val_n_tokens"] = val_meta["n_tokens"]
    full = main_w.finish(meta)
    if not isinstance(val_w, ShardWriter) and (out / "val").exists():
        shutil.rmtree(out / "val", ignore_errors=True)  # a val/ split from an older run
    return full


def _sum_counts(per_input: dict[str, Counter]) -> dict[str, int]:
    """Totals over inputs, in COUNT_KEYS order."""
    return {k: int(sum(c[k] for c in per_input.values())) for k in COUNT_KEYS}


def _run_source(kind: str, src: Source, tok: Any, opts: _Options, counts: Counter, seen: Int64Set | None,
                near: NearDupIndex | None, train_w: ShardWriter, val_w: Any, bar: Any, t0: float) -> None:
    """Stream one input through clean → encode (overlapped) → near-dup → writers."""
    import numpy as np


    def finish(keys: list[int], fut: Future) -> None:
        enc: Encoded = fut.result()
        keep = np.ones(len(keys), dtype=bool)
        if near is not None:
            keep = near.filter(enc.tokens, enc.item_starts())
            counts["near_dups"] += int((~keep).sum())
        if opts.val_frac > 0:
            is_val = np.fromiter((in_val_split(k, opts.val_frac) for k in keys), dtype=bool, count=len(keys))
            val_items = keep & is_val
            if val_items.any():
                part = enc.select(val_items)
                val_w.add(part.tokens, part.doc_lens, part.mask, part.side)
                counts["val"] += int(val_items.sum())
            keep &= ~is_val
        counts["kept"] += int(keep.sum())
        part = enc if keep.all() else enc.select(keep)
        train_w.add(part.tokens, part.doc_lens, part.mask, part.side)
        bar.set_postfix_str(f"{counts['read'] / (time.perf_counter() - t0):,.0f} docs/s", refresh=False)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode") as pool:
        pending: tuple[list[int], Future] | None = None
        for items, keys in _batches(kind, src, opts, counts, seen, bar):
            fut = pool.submit(_encode, kind, tok, items, opts.special_tokens_in_text)
            if pending is not None:
                finish(*pending)  # overlaps with the encoding of this batch
            pending = (keys, fut)
        if pending is not None:
            finish(*pending)


# ------------------------------------------------------------------------------------------------
# Mixing


def _mix(staged: list[Any], names: list[str], weights: list[float], out_w: ShardWriter, seed: int) -> dict:
    """Write the items of the staged inputs with token shares = weights (see module doc); returns stats."""
    import numpy as np

    rng = np.random.default_rng(seed)
    dpi = 2 if out_w.kind == "preference" else 1
    item_tokens = []
    for s in staged:
        lens = s.doc_lens
        item_tokens.append(lens.reshape(-1, dpi).sum(axis=1) if len(lens) else np.zeros(0, np.int64))
    total = sum(int(t.sum()) for t in item_tokens)
    wsum = sum(weights)
    picks, stats = [], {}
    for i, (name, w, toks) in enumerate(zip(names, weights, item_tokens)):
        have = int(toks.sum())
        if have == 0:
            raise ValueError(f"--mix {name}:{w}: no documents left after cleaning, nothing to mix in")
        target = w / wsum * total
        full = int(target // have)
        perm = rng.permutation(len(toks))
        cum = np.cumsum(toks[perm])
        rest = target - full * have
        k = int(np.searchsorted(cum, rest))  # first k with cum[k] ≥ rest; take k+1 items if closer
        if k < len(cum) and (k == 0 or abs(cum[k] - rest) < abs(rest - cum[k - 1])):
            k += 1
        chosen = np.concatenate([np.tile(np.arange(len(toks)), full), perm[:k]])
        picks.append(np.stack([np.full(len(chosen), i), chosen], axis=1))
        stats[name] = {"weight": w, "items_in": int(len(toks)), "tokens_in": have, "items_out": int(len(chosen)),
                       "tokens_out": int(toks[chosen].sum()), "target_tokens": int(round(target))}
    order = np.concatenate(picks)
    order = order[rng.permutation(len(order))]
    for lo in range(0, len(order), 4096):
        toks, lens, masks, side = [], [], [], []
        for i, item in order[lo : lo + 4096].tolist():
            s = staged[i]
            for d in range(item * dpi, item * dpi + dpi):
                toks.append(s.doc(d))
                lens.append(len(toks[-1]))
                if out_w.with_mask:
                    masks.append(s.doc_mask(d))
                if out_w.with_side:
                    side.append(json.dumps(s.side(d), ensure_ascii=False))
        out_w.add(np.concatenate(toks), np.array(lens, dtype=np.int64),
                  np.concatenate(masks) if out_w.with_mask else None, side if out_w.with_side else None)
    return stats


# ------------------------------------------------------------------------------------------------
# CLI
