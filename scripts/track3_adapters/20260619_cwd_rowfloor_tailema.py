"""#46 (the record): SOAP-Muon + RowFloor + radial brake / radius pin + post-pin cautious weight decay, aux Adam,
EMA-Nesterov, PowerCool, Tail-EMA readout; the folder's train_gpt_cwd_SOTA.py (its logs embed an env-gated research
trainer that the result's README calls equivalent under ROWFLOOR=1 ROWFLOOR_FROB=0 ROWFLOOR_RHO=1.0 CWD=0.025
CWD_POST=1 TAILEMA_TAU=150 TAILEMA_LAMBDA=0.6).

Its schedule points sit at 2900-step scale; here 10 steps cross all of them:
  - horizon: FINAL_TRAIN_STEPS = FINAL_SCHEDULE_STEPS = 10 (2900 in the run).
  - PowerCool lr = min(initial_lr, c * (t_end - step)**1.2): every c is scaled by (2900/10)**1.2 so each group
    leaves its flat phase at the same fraction of the run (Muon after step ~1.8, as ~514/2900; the Adam groups
    after step ~5.1, as ~1487/2900).
  - Muon momentum: warm-up 0.85 -> 0.95 over 3 steps (300), cool-down to 0.85 over the last 3 (200).
  - attn.proj SOAP trust gate: early floor 0.45 until step 4 (1375), fading to 0 by step 6 (1625); cap 0.85 until 6.
  - EMA-Nesterov: prefill_steps 2 (300), rest_steps = steps - 1 = 9 (train_steps - 950): look-ahead at it 2..8,
    so its scale 0.3 * lr/initial_lr (the AdamW embedding group's, as the previous step left it) decays at it 7, 8.
  - Tail-EMA: starts at step + 1 = 6 (2400), ends at 10 (2900), tau 4 (150); the final validation evaluates the
    raw weights, then the 0.4 / 0.6 blend with the EMA (val_passes "val_loss", "val_ema_loss").
  - CGI gains: the antithetic head-mean pairs start at layer 1 instead of 6, so the 2-layer model draws layer 0's
    Rademacher signs from the global generator and layer 1's from the seeded per-layer generator (seed 0, the
    script's --seed default)."""

RESULT = 46
STEPS = 10
_T, _P = 2900, 1.2


def _power_c(c):
    return lambda steps: c * (_T / steps) ** _P


ASSIGN = {
    "FINAL_TRAIN_STEPS": lambda steps: steps,
    "FINAL_SCHEDULE_STEPS": lambda steps: steps,
    "ADAM_EMBED_POWER_C": _power_c(4.976805410800738e-05),
    "ADAM_PROJ_POWER_C": _power_c(5.184172302917436e-07),
    "ADAM_OTHER_POWER_C": _power_c(1.6589351369335795e-06),
    "MUON_POWER_C": _power_c(3.3169534699576625e-06),
    "_MU_WARMUP_STEPS": 3,
    "_MU_COOLDOWN_STEPS": 3,
    "ATTN_TRUST_FLOOR_END_STEP": 4,
    "ATTN_TRUST_FLOOR_FADE_END_STEP": 6,
    "TAILEMA_START": 6,
    "TAILEMA_END": lambda steps: steps,
    "TAILEMA_TAU": 4.0,
    "_CGI_PAIR_FROM_LAYER": 1,
}
KWARGS = {"EMA_Nesterov": {"prefill_steps": 2, "rest_steps": lambda steps: steps - 1}}
RECORD_FORWARD_NORMS = True
VAL_LABELS = ("val_loss", "val_ema_loss")
NOTES = __doc__
