"""#5 MuonH (hyperball Muon on the hidden matrices, aux AdamW), the folder's train_gpt_simple_muonh.py.

No step-expressed schedule points: the MuonH groups decay linearly over the whole horizon (cooldown_frac 1.0), the
aux group over the last 40% (steps 3 and 4 of 5). The .py re-inits every parameter with the baseline's rule, then
scales attn.proj / mlp.proj / mlp.fc (the published runs' log script instead keeps PyTorch's default init: see
--source log)."""

RESULT = 5
STEPS = 5
NOTES = __doc__
