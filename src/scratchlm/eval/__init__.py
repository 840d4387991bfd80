"""Measurement, in one place: perplexity (eval/perplexity.py), held-out task accuracy and chats
(eval/tasks.py), preference and reward-model accuracy (eval/preference.py). The demo and every training
stage take their before/after numbers from here."""
