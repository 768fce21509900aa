"""#7 Muon^2 (Adam second-moment preconditioning before Newton-Schulz, aux AdamW), the folder's
train_gpt_simple_muonsq.py.

No step-expressed schedule points: stable then linear decay with cooldown_frac 0.7 (steps 2..4 of 5 decay). The .py
uses the baseline's init; the published run's log script keeps PyTorch's default init (see --source log)."""

RESULT = 7
STEPS = 5
NOTES = __doc__
