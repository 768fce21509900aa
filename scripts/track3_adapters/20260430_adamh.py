"""#4 AdamH (hyperball Adam on the hidden matrices, aux AdamW), the log's script (the folder has no .py).

The AdamH group warms up linearly over h_warmup_steps (250 in the run; 2 here, so steps 0 and 1 run at eta 0 and
0.5) and then decays linearly over the whole horizon (cooldown_frac 1.0); the aux group is flat, then decays over
the last 40% (steps 3 and 4 of 5). The hidden matrices keep PyTorch's default Linear init (scaled per module), so
the construction-time draws matter: they are seeded."""

RESULT = 4
STEPS = 5
ASSIGN = {"h_warmup_steps": 2}
NOTES = __doc__
