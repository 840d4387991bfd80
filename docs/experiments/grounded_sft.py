"""Does grounded-answer SFT teach the demo model to read the passage? A short SFT on top of the demo's SFT model
with the demo's own SFT chats plus grounded chats (data/grounded.py), then closed-book vs gold-passage accuracy
(eval/grounded.py) on the val split, before and after.

    PYTHONPATH=src nice -n 10 python docs/experiments/grounded_sft.py --demo /work/runs/demo0 --out /tmp/ground-exp

The demo model's context is 256 tokens; the grounded chats here use short poems (<= 60 characters: every chat fits) and one
distractor so a chat fits (the data's defaults — 160 characters, 1-2 distractors — are for longer contexts).
Writes OUT/results.json (and docs/results/NAME.json with --results NAME)."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("/work/runs/demo0"), help="a finished demo folder (sft/, data/)")
    ap.add_argument("--init", type=Path, default=None,
                    help="the run to fine-tune and score as 'before' (default: the demo's sft/; e.g. its tools/)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/ground-exp"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--per-task", type=int, default=600, help="grounded training chats per task")
    ap.add_argument("--n-eval", type=int, default=30, help="val items per task")
    ap.add_argument("--max-chars", type=int, default=60)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--distractors", default="1,1", metavar="LO,HI",
                    help="distractor poems per training chat, fewest and most (0,0: the gold passage alone)")
    ap.add_argument("--demo-rows", type=int, default=0,
                    help="demo SFT chats replayed beside (0: all of them; -1: none, grounded chats only)")
    ap.add_argument("--counterfactual", type=int, default=0, metavar="N",
                    help="also N chats per task on made-up poems (data.grounded.counterfactual_poems: lines, title "
                    "and poet drawn apart, so only reading gives the answer)")
    ap.add_argument("--skip-before", action="store_true", help="score only the trained model")
    ap.add_argument("--retrieval", action="store_true",
                    help="also score with retrieval: BM25 top 3 over the corpus index (hash embedder: no e5 indexing)")
    ap.add_argument("--results", default="", metavar="NAME", help="also write docs/results/NAME.json")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 for two experiments side by side)")
    args = ap.parse_args()

    import torch

    from scratchlm.data.answers import GROUNDED_TASKS
    from scratchlm.data.corpus import poems as corpus_poems
    from scratchlm.data.grounded import Grounded, counterfactual_poems
    from scratchlm.engine.offline import LLM
    from scratchlm.eval.grounded import grounded_accuracy
    from scratchlm.shards.prepare import prepare
    from scratchlm.train.stage import train_stage

    torch.set_num_threads(args.threads)
    t0 = time.time()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    poems = corpus_poems("train")
    lo, hi = (int(x) for x in args.distractors.split(","))
    tasks = {n: Grounded(n, poems, max_chars=args.max_chars, n_distractors=(lo, hi)) for n in GROUNDED_TASKS}
    rows = []
    for name, task in tasks.items():
        for split in ("train", "val"):
            rng = random.Random(f"grounded-exp:{name}:{split}")
            n = args.per_task if split == "train" else 60
            for _ in range(n):
                ex = task.sample(rng, split, rng.choice(["en", "zh"]))
                rows.append((split, {"conversations": [{"role": "user", "content": ex.question},
                                                       {"role": "assistant", "content": ex.reply}]}))
    made_up = 0
    # one counterfactual_poems call per 400 chats a kind: each call has ~500 distinct training items a kind
    for r in range(-(-args.counterfactual // 400)):
        cf = counterfactual_poems(poems, seed=r, max_chars=args.max_chars)
        for name in GROUNDED_TASKS:
            task = Grounded(name, cf, max_chars=args.max_chars, n_distractors=(lo, hi))
            rng = random.Random(f"grounded-exp-cf:{name}:{r}")
            for _ in range(min(400, args.counterfactual - 400 * r)):
                ex = task.sample(rng, "train", rng.choice(["en", "zh"]))
                rows.append(("train", {"conversations": [{"role": "user", "content": ex.question},
                                                         {"role": "assistant", "content": ex.reply}]}))
                made_up += 1
    demo_sft = (args.demo / "data" / "synth" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()
    if args.demo_rows < 0:
        demo_sft = []
    elif args.demo_rows:
        demo_sft = random.Random(1).sample(demo_sft, min(args.demo_rows, len(demo_sft)))
    mix = [json.dumps(r, ensure_ascii=False) for s, r in rows if s == "train"] + demo_sft  # replay: keep old skills
    random.Random(0).shuffle(mix)
    (out / "sft_train.jsonl").write_text("\n".join(mix) + "\n", encoding="utf-8")
    (out / "sft_val.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for s, r in rows if s == "val")
                                       + "\n", encoding="utf-8")
    tok = args.demo / "sft"
    init = args.init or args.demo / "sft"
    for name in ("sft_train", "sft_val"):
        if not (out / name / "meta.json").exists():
            prepare("sft", tok, [out / f"{name}.jsonl"], out / name, dedup=False)
    run = out / "sft_grounded"
    if not (run / "model.safetensors").exists():
        sets = [f"train.max_steps={args.steps}", "train.batch_size=16", "train.seq_len=256", f"train.lr={args.lr}",
                "train.schedule=cosine", "train.packing=true", f"train.save_every={args.steps}",
                f"train.val_data={out / 'sft_val'}", "train.pretrain_mix=0"]
        train_stage("sft", run, "tiny", sets, str(out / "sft_train"), init_from=init, tokenizer=tok,
                    progress=False)
    items = []
    for name, task in tasks.items():
        rng = random.Random(f"grounded-exp-eval:{name}")
        items += [task.item(rng, "val", ("en", "zh")[i % 2]) for i in range(args.n_eval)]
    results = {"steps": args.steps, "lr": args.lr, "distractors": [lo, hi], "grounded_train_chats": args.per_task * len(tasks),
               "counterfactual_chats": made_up, "demo_chats": len(demo_sft),
               "n_eval": len(items), "split": "val"}
    results["init"] = str(init)
    models = [("before", init)] * (not args.skip_before) + [("after", run)]
    for label, model_dir in models:
        llm = LLM.from_run(model_dir, "cpu")
        modes = ("closed_book", "gold", "retrieval") if args.retrieval else ("closed_book", "gold")
        r = grounded_accuracy(llm, items, out, modes=modes, max_new_tokens=40, embedder="hash", search_mode="bm25")
        keys = [k for k in (*modes, "gold_retrieved") if k in r]
        results[label] = {k: r[k] for k in keys} | {"samples": r["samples"][:3]}
        print(label, json.dumps({k: r[k] for k in keys}, ensure_ascii=False))
    results["seconds"] = round(time.time() - t0)
    (out / "results.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if args.results:
        from scratchlm.results import write_results

        write_results(Path(f"docs/results/{args.results}.json"), args.results,
                      {k: results[k] for k in ("before", "after", "steps", "lr", "n_eval") if k in results}, seed=0, split="val")
    print(f"done in {results['seconds']} s → {out / 'results.json'}")


if __name__ == "__main__":
    main()
