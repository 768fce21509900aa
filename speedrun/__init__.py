"""The trainer's machinery, in one namespace: configuration (speedrun.config), the training step (step), the clock
(clock), the non-finite guard (guard), stop signals (signals), checkpoints and the run lock (checkpoint), what a
resumed run may change (resume), the run directory (rundir), log.jsonl and the summary line (runlog), the
step-memory estimate (memory), one-line user errors (cli) and atomic file writes (atomic). train.py wires them
together."""
