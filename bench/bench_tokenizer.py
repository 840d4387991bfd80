"""Tokenizer speed: our encode_batch vs a per-text encode loop and transformers' AutoTokenizer; chat encoding too.

Run: python bench/bench_tokenizer.py [--dir TOKENIZER_DIR] [--vocab-size 6400] [--docs 5000] [--repeat 3]
Without --dir it first trains a tokenizer on the built-in corpus (and reports that time). Then it encodes the
first --docs documents of the corpus train split and times each method (best of --repeat), printing times as ratios against our
encode_batch measured in the same run (> 1 means slower than encode_batch). All methods give the same ids;
the script checks that before timing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

from scratchlm.data.corpus import corpus_texts, poems
from scratchlm.tokenizer.bpe import Tokenizer, train_tokenizer


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Smallest wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    """Time the methods and print the ratios."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="an existing tokenizer folder (default: train one now)")
    ap.add_argument("--vocab-size", type=int, default=6400)
    ap.add_argument("--docs", type=int, default=5000, help="documents of the train split to encode (0 = all)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.dir:
            tok_dir = args.dir
        else:
            t0 = time.perf_counter()
            tok_dir = train_tokenizer(tmp, vocab_size=args.vocab_size, show_progress=False)
            print(f"trained vocab {args.vocab_size} on the corpus train split in {time.perf_counter() - t0:.2f}s")
        tok = Tokenizer.load(tok_dir)
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(tok_dir))

    texts = corpus_texts("train")
    texts = texts[: args.docs] if args.docs else texts
    n_chars = sum(map(len, texts))
    ref = tok.encode_batch(texts)
    assert ref == [tok.encode(t) for t in texts]
    # transformers parses control-token strings out of plain text; the corpus holds none, so ids agree.
    assert hf(texts[:2000], add_special_tokens=False)["input_ids"] == ref[:2000]

    rows = [
        ("Tokenizer.encode_batch (ours, Rust batch)", best_of(lambda: tok.encode_batch(texts), args.repeat)),
        ("Tokenizer.encode per text (Python loop)", best_of(lambda: [tok.encode(t) for t in texts], args.repeat)),
        ("AutoTokenizer(texts) (transformers)", best_of(lambda: hf(texts, add_special_tokens=False), args.repeat)),
    ]
    base = rows[0][1]
    print(f"\nplain text: {len(texts):,} docs, {n_chars:,} chars, {sum(map(len, ref)):,} tokens")
    for name, t in rows:
        print(f"  {name:45s} {t * 1e3:9.1f} ms  {n_chars / t / 1e6:6.2f} Mchar/s  ratio {t / base:5.2f}")

    # Chat: one conversation per poem ("who wrote <title>?" → author + poem).
    chats = [
        [
            {"role": "system", "content": "You are scratchlm."},
            {"role": "user", "content": f"《{p['title']}》的作者是谁？"},
            {"role": "assistant", "content": f"<think>{p['title']}</think>{p['author']}。\n{p['text']}"},
        ]
        for p in poems("train")
    ]

    def hf_chat() -> list:
        return [hf.apply_chat_template(m, tokenize=True) for m in chats]

    ours = [tok.encode_chat(m)[0] for m in chats]
    got = [r["input_ids"] if hasattr(r, "keys") else r for r in hf_chat()[:200]]
    assert got == ours[:200]
    rows = [
        ("Tokenizer.encode_chat (ids + loss mask)", best_of(lambda: [tok.encode_chat(m) for m in chats], args.repeat)),
        ("AutoTokenizer.apply_chat_template (ids only)", best_of(hf_chat, args.repeat)),
    ]
    base = rows[0][1]
    print(f"\nchat: {len(chats):,} conversations")
    for name, t in rows:
        print(f"  {name:45s} {t * 1e3:9.1f} ms  {len(chats) / t:9.0f} chats/s  ratio {t / base:5.2f}")
    print("\n(timings on a shared machine; ratios come from the same run)")


if __name__ == "__main__":
    main()
