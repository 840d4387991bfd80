"""`scratchlm demo`: the whole pipeline on the built-in corpus, on a CPU, in minutes.

settings.py (DemoSettings, read from configs/demo/settings.toml; the demo's steps), data.py, one module per
stage (pretrain, sft, lora, reward, dpo, grpo, ppo, distill, rag), run.py (`run_demo`, the order and the lanes),
cli.py (the arguments). Every stage leaves a folder under --out (runs/demo by default).
"""
