"""Why the trace verifier cannot help the GRPO cold-start model on 3-digit addition: how many of its wrong greedy
answers (val split) come with a fully self-consistent column-addition trace (addition_trace_verifier = 1.0), i.e.
an operand miscopied into the trace rather than a slip in a step or a carry.

    PYTHONPATH=src nice -n 10 python docs/experiments/inference_scaling_errors.py --demo /work/runs/demo0

Prints the counts and three examples; writes nothing."""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=Path("/work/runs/demo0"), help="a finished demo folder")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()

    import torch

    from scratchlm.data.answers import check_answer
    from scratchlm.data.clean import clean_messages
    from scratchlm.engine.offline import LLM
    from scratchlm.engine.sampling import SamplingParams
    from scratchlm.eval.scaling import addition_trace_verifier, load_task_prompts
    from scratchlm.runs import load_run

    torch.set_num_threads(1)
    model, tok, _ = load_run(args.demo / "grpo_cold")
    prompts = args.demo / "data" / "grpo_synth" / f"prompt_{args.split}.jsonl"
    recs = load_task_prompts(prompts, {"add3"}, None)["add3"]
    ids = [list(tok.encode_chat(clean_messages(r["prompt"]), add_generation_prompt=True)[0]) for r in recs]
    outs = LLM(model, tok).generate(ids, SamplingParams(temperature=0.0, max_new_tokens=48))
    wrong = consistent = 0
    for r, o in zip(recs, outs):
        reply = tok.decode(o, skip_special_tokens=True)
        if not check_answer("add3", reply, r["answer"]):
            wrong += 1
            consistent += addition_trace_verifier(r["prompt"], reply) == 1.0
            if wrong <= 3:
                print(f"{r['prompt'][-1]['content']!r} answer {r['answer']}: {reply}")
    print(f"{args.split}: {len(recs)} add3 items, {wrong} wrong greedy answers, {consistent} of them with a fully "
          "self-consistent trace")


if __name__ == "__main__":
    main()
