"""#39 Muon + aux AdamW wrapped in EMA-Nesterov, the log's script (no .py).

The lookahead is active while prefill_steps < it + 1 and it < rest_steps (500 and train_steps - 750 in the run).
Here prefill_steps = 2 and rest_steps = steps - 1, so over 6 steps the lookahead is off at it = 0, 1, on at
it = 2, 3, 4 (its size 0.6 * lr/initial_lr, decaying with the schedule) and off again at it = 5. The lookahead
moves the parameters before the forward: their norms at each training forward are recorded too
(norms_at_forward); "norms" are after the inner steps and the EMA update (at model.zero_grad)."""

RESULT = 39
STEPS = 6
KWARGS = {"EMA_Nesterov": {"prefill_steps": 2, "rest_steps": lambda steps: steps - 1}}
RECORD_FORWARD_NORMS = True
NOTES = __doc__
