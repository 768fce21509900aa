"""#37 MuonH with the aux AdamW re-tuned, the folder's train_gpt_simple_muonh_tuned_aux_3250.py.

No step-expressed schedule points: the MuonH group decays linearly over the whole horizon (cooldown_frac 1.0), the
aux group over the last 85% (steps 1..4 of 5)."""

RESULT = 37
STEPS = 5
NOTES = __doc__
