"""#13 NorMuonH wrapped in a MuLoCo outer Nesterov SGD, the folder's train_gpt_simple_muloco_normuonh.py.

The published runs set OUTER_LR=0.7 and TRAIN_STEPS=3210 in the environment (their logs print "olr=0.7 omom=0.5
H=30 train_steps=3210"); here OUTER_LR=0.7 and the sync interval H is 3 instead of 30, so 6 steps hold two outer
steps (after inner steps 3 and 6; the second uses the outer momentum). The outer step runs after
model.zero_grad, so every parameter's norm is recorded after the outer optimizer's maybe_outer_step."""

RESULT = 13
STEPS = 6
ENV = {"OUTER_LR": "0.7", "SYNC_INTERVAL": "3"}
RECORD_AFTER = "NesterovOuterOptimizer.maybe_outer_step"
NOTES = __doc__
