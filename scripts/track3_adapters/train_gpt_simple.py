"""The track's reference script, records/track_3_optimization/train_gpt_simple.py (the tuned baseline: Muon + aux
AdamW, stable then linear decay with cooldown_frac 0.7 over train_steps). Nothing to move: the horizon is the run's
5 steps, so steps 0, 1 are stable and 2..4 decay."""

STEPS = 5
