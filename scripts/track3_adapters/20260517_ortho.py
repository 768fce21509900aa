"""#22 spectral descent (Muon with mu=0: Newton-Schulz of the raw gradient), the log's script (no .py).

No step-expressed schedule points: stable then linear decay with cooldown_frac 0.7 (steps 2..4 of 5 decay)."""

RESULT = 22
STEPS = 5
NOTES = __doc__
