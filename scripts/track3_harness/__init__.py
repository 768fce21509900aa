"""The harness behind scripts/track3_golden.py: a modded-nanogpt track-3 result's own script, run on the CPU at a
tiny size, with every figure of the run recorded. The command's docstring states what is run and recorded.

  source   where the result's script comes from: a checkout (git directory or plain copy) at a commit, or disk
  adapt    its per-result adapter (scripts/track3_adapters/) and the syntax-tree rewrite of its constants
  cpu      the patches that run CUDA/NCCL code on one CPU process, and the token shards it reads
  record   the recorder the rewritten script calls back, and one execution of the script

Here: the tiny size every script is rewritten to, the seeds, and the track's layout in the checkout.
"""

from pathlib import Path

N_LAYER, DIM, VOCAB, ROWS, SEQ = 2, 256, 50304, 2, 64
INIT_SEED = 1234
PERTURB_STD = 0.05
DATA_VOCAB, TRAIN_SEED, VAL_SEED, VAL_TOKENS = 64, 1000, 2000, 256
TRACK = "records/track_3_optimization"
RESULTS = f"{TRACK}/results"
ADAPTERS = Path(__file__).resolve().parents[1] / "track3_adapters"
BASELINE = "train_gpt_simple"

# The tiny size, as rewrites every script gets (an adapter adds its own).
TINY_ASSIGN = {"val_tokens": VAL_TOKENS, "batch_size": ROWS * SEQ, "mbs": ROWS}
TINY_KWARGS = {"GPT": {"vocab_size": VOCAB, "num_layers": N_LAYER, "model_dim": DIM}}
TINY_DEFAULTS = {"distributed_data_generator": {"seq_len": SEQ}}

