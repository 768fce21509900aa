"""The trainer's own machinery, in one namespace: configuration (speedrun.config), checkpoints and the run lock
(speedrun.checkpoint), the step-memory estimate (speedrun.memory), one-line user errors (speedrun.cli) and atomic
file writes (speedrun.atomic). train.py wires them together."""
