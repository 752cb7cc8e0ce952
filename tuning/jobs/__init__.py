"""Tuning jobs: supervised (sft), preference (dpo) and distillation (distill), all resumable."""
