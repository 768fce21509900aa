"""#8 NorMuonH (NorMuon direction + hyperball on the hidden matrices, aux AdamW), the log's script (no .py).

No step-expressed schedule points: the NorMuonH groups decay linearly over the whole horizon (cooldown_frac 1.0),
the aux group over the last 40% (steps 3 and 4 of 5). The published run's horizon is 3275 steps, read out at 3250."""

RESULT = 8
STEPS = 5
NOTES = __doc__
