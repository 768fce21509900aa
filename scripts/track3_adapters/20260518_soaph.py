"""#27 SOAPH (SOAP without bias correction + hyperball on the hidden matrices, aux AdamW), the folder's
train_gpt_simple_soaph.py.

The SOAPH groups' schedule runs over lr_steps (3200 in the run, beyond its 3125 training steps, so the lr never
reaches 0): here lr_steps = steps + 1 (6 for 5 steps), keeping it past the end. The aux group decays over the last
40% of train_steps."""

RESULT = 27
STEPS = 5
ASSIGN = {"lr_steps": lambda steps: steps + 1}
NOTES = __doc__
