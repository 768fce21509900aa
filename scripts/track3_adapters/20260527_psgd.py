"""#33 PSGD Kron (whitening preconditioners, hyperball on the hidden matrices, aux AdamW), the folder's
train_psgd.py.

Its loss is a mean over tokens (reduction="mean"), not a sum; its validation averages the per-batch means
(VAL_DENOMINATOR "microbatches") and all-reduces with AVG. The preconditioner update draws torch.randn_like from
the global generator every step (seeded with the init). No step-expressed schedule points: PSGD lr decays
linearly over the whole run, the aux AdamW's scale from 1 to 0.1 over the second half (int(train_steps / 2))."""

RESULT = 33
STEPS = 5
VAL_DENOMINATOR = "microbatches"
NOTES = __doc__
