"""Golden figures from modded-nanogpt's track-3 reference script, run on the CPU at a tiny size.

    python scripts/track3_golden.py --reference PATH/records/track_3_optimization/train_gpt_simple.py \
        > tests/golden/track3_train_gpt_simple.json

The reference's own model and optimizer definitions run here, outside this repository: the script executes
the reference file's source up to its "Setup" section (below it the file starts CUDA and NCCL at import) in a
namespace of its own, then drives those definitions the way its Setup section does, at a size the CPU runs in
seconds: 2 layers, d=256 (2 heads of 128), 2 rows of 64 tokens, vocab 50304, one process, fp32.

  - fp32: the reference's bf16 token embedding is converted to fp32 before the init, so every activation is
    fp32 (its Linears and norms cast their weights to the activation dtype). Muon's Newton-Schulz stays bf16,
    as the reference writes it.
  - torch.compile is replaced by the identity while the source executes. Compiling muon_update only fuses its
    elementwise ops (the momentum lerps, the scalings and sums inside the Newton-Schulz, the aspect-ratio
    scale), which moves where their bf16 results are rounded (a fused chain is computed in fp32 and rounded
    once); eager, one rounding per op, is the well-defined version to match, and the one our Muon runs.
  - One process in a gloo group: the reference's Muon.step calls dist.get_world_size()/all_gather.
  - Init: the RNG is seeded right before a loop that applies the reference's per-parameter rule (its Setup
    section's init) over model.named_parameters(), in that order.
  - Data: a train stream of 1024 tokens among the first 64 ids (generator seed 1000: a unigram the 5 steps
    learn, so the loss moves) read as the reference's loader reads a shard: step k takes the window
    [128k, 128k + 129) as 2 rows of inputs and targets shifted by one; a val stream of 513 tokens (seed 2000)
    whose first 256 tokens (+1) are 2 micro-batches of 2 rows, validated like its training loop does (the
    summed losses / 256) before the first step and after the last. A test writes both streams as shards.
  - Optimizers: as its Setup section builds them, with the baseline's hyperparameters (AdamW: embed .7, head
    weight .004, every <2-D parameter .015, betas (.8, .95), eps 1e-10, wd .001, fused; Muon lr .025, wd .05),
    and its stable-then-decay schedule (cooldown_frac .7) over a horizon of 5 steps, so that the 5 steps
    cover both the stable phase (steps 0, 1) and the decay (steps 2..4).

Printed (JSON): the init of every parameter (norm, sum and the first and last two entries), the loss and each
gradient's norm and a seeded probe <grad, r> at a perturbed state (init + seeded noise, on step 0's batch: a
model-only check where every gradient is non-zero), for each of the 5 steps the summed loss before the update
and every parameter's norm after it, and the val loss before and after the 5 steps; then the same 5 steps
again with the Newton-Schulz's bf16 matmuls emulated (fp32 GEMM of the bf16 operands, rounded to bf16: a bf16
GEMM in another summation order), a peer that says how far two legitimate bf16 evaluations of the reference
drift apart. Norms, sums and probes are float64 reductions of the fp32 tensors.
"""

import argparse
import hashlib
import json
import platform
import re
import sys

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

N_LAYER, DIM, VOCAB, ROWS, SEQ = 2, 256, 50304, 2, 64
INIT_SEED = 1234
STEPS, HORIZON, COOLDOWN_FRAC = 5, 5, 0.7
PERTURB_STD = 0.05
DATA_VOCAB, TRAIN_SEED, TRAIN_TOKENS, VAL_SEED, VAL_TOKENS = 64, 1000, 1024, 2000, 256


def load_reference(path: str) -> dict:
    """Execute the reference source up to its Setup section; return its namespace (GPT, Muon, ...)."""
    source = open(path).read()
    lines = source.splitlines(keepends=True)
    banner = next((i for i, line in enumerate(lines) if re.fullmatch(r"#\s+Setup\s+#\s*", line.strip())), None)
    if banner is None or banner == 0:
        raise SystemExit(f"{path}: no '#  Setup  #' section banner found; is this train_gpt_simple.py?")
    head = "".join(lines[: banner - 1])  # the banner's top rule is the line before its title
    namespace = {"__name__": "track3_reference", "__file__": path}
    compile_ = torch.compile
    torch.compile = lambda fn=None, **kwargs: fn if fn is not None else (lambda f: f)
    try:
        exec(compile(head, path, "exec"), namespace)
    finally:
        torch.compile = compile_
    return namespace


def init_like_reference(model: torch.nn.Module):
    """The reference's per-parameter init, in model.named_parameters() order."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight"):
                if "proj" in name:
                    p.zero_()
                elif "embed" in name:
                    p.normal_()
                else:
                    p.normal_(std=0.33**0.5 / p.size(-1) ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("gains"):
                p.normal_(mean=1, std=0)
            else:
                raise SystemExit(f"no init rule for {name}")


def streams() -> tuple[torch.Tensor, torch.Tensor]:
    """The train stream (1024 tokens) and the val stream (2·VAL_TOKENS + 1 tokens), int64."""
    train = torch.randint(0, DATA_VOCAB, (TRAIN_TOKENS,), generator=torch.Generator().manual_seed(TRAIN_SEED))
    val = torch.randint(0, DATA_VOCAB, (2 * VAL_TOKENS + 1,), generator=torch.Generator().manual_seed(VAL_SEED))
    return train, val


def batch(stream: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    buf = stream[step * ROWS * SEQ :][: ROWS * SEQ + 1]
    return buf[:-1].view(ROWS, SEQ), buf[1:].view(ROWS, SEQ)


def val_loss(model, val: torch.Tensor) -> float:
    with torch.no_grad():
        total = sum(model(*batch(val, i)) for i in range(VAL_TOKENS // (ROWS * SEQ)))
    return (total / VAL_TOKENS).item()


def lr_factor(step: int) -> float:
    progress = step / HORIZON
    return 1.0 if progress < 1 - COOLDOWN_FRAC else (1 - progress) / COOLDOWN_FRAC


def probe(i: int, t: torch.Tensor) -> float:
    r = torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
    return (t.double() * r).sum().item()


class EmulatedBf16Matmul(TorchFunctionMode):
    """bf16 @ bf16 as an fp32 matmul of the (exactly representable) operands rounded to bf16: a bf16 GEMM with
    fp32 accumulation in another summation order. Run around the reference's Muon step it gives the peer
    trajectory: the reference itself, as a CPU without native bf16 matmuls computes it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        matmuls = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm)
        if func in matmuls and all(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args[:2]):
            return torch.matmul(args[0].float(), args[1].float()).bfloat16()
        return func(*args, **kwargs)


def train_steps(ref, model, train, val, emulate: bool) -> tuple[list, float]:
    """STEPS steps of the baseline optimizers from the model's current state, as the reference's Setup section
    builds and drives them; returns the per-step records and the val loss after the last step."""
    adam = torch.optim.AdamW([dict(params=[model.embed.weight], lr=0.7),
                              dict(params=[model.proj.weight], lr=0.004),
                              dict(params=[p for p in model.parameters() if p.ndim < 2], lr=0.015)],
                             betas=(0.8, 0.95), eps=1e-10, weight_decay=0.001, fused=True)
    muon = ref["Muon"]([p for p in model.blocks.parameters() if p.ndim >= 2], lr=0.025, weight_decay=0.05)
    optimizers = [adam, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    steps = []
    for step in range(STEPS):
        x, y = batch(train, step)
        loss = model(x, y)
        loss.backward()
        factor = lr_factor(step)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
        adam.step()
        if emulate:
            with EmulatedBf16Matmul():
                muon.step()
        else:
            muon.step()
        model.zero_grad(set_to_none=True)
        steps.append({"lr_factor": factor, "loss": loss.item(), "norms": {
            name: p.detach().double().norm().item() for name, p in model.named_parameters()}})
    return steps, val_loss(model, val)


def fingerprint(t: torch.Tensor) -> dict:
    flat = t.detach().double().flatten()
    return {"norm": flat.norm().item(), "sum": flat.sum().item(), "first": flat[:2].tolist(),
            "last": flat[-2:].tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", required=True, help="path to records/track_3_optimization/train_gpt_simple.py")
    args = parser.parse_args()
    ref = load_reference(args.reference)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    torch.set_num_threads(1)

    model = ref["GPT"](vocab_size=VOCAB, num_layers=N_LAYER, model_dim=DIM)
    model.embed.float()
    torch.manual_seed(INIT_SEED)  # after construction, which draws from the generator too
    init_like_reference(model)
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    out = {"init": {name: fingerprint(p) for name, p in model.named_parameters()}}

    # model-only: loss and gradients at init + seeded noise (every gradient non-zero)
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(PERTURB_STD * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    train, val = streams()
    x, y = batch(train, 0)
    loss = model(x, y)
    loss.backward()
    out["perturbed"] = {"loss": loss.item(), "grads": {
        name: {"norm": p.grad.double().norm().item(), "probe": probe(i, p.grad)}
        for i, (name, p) in enumerate(model.named_parameters())}}
    # 5 steps of the baseline optimizers from the init: as the reference runs here, then with its bf16 matmuls
    # emulated (the peer: what the same code gives when bf16 GEMMs accumulate in another order)
    for key in ("", "_emulated_bf16"):
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(initial[name])
        model.zero_grad(set_to_none=True)
        out["val_loss_before"] = val_loss(model, val)
        out["steps" + key], out["val_loss_after" + key] = train_steps(ref, model, train, val, emulate=bool(key))

    source = open(args.reference, "rb").read()
    out["meta"] = {
        "command": " ".join(["python", *sys.argv]),
        "reference_sha256": hashlib.sha256(source).hexdigest(),
        "reference_git_blob": hashlib.sha1(b"blob %d\0" % len(source) + source).hexdigest(),
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(), "python": platform.python_version(),
        "shape": dict(n_layer=N_LAYER, dim=DIM, vocab=VOCAB, rows=ROWS, seq=SEQ), "init_seed": INIT_SEED,
        "horizon": HORIZON, "perturb_std": PERTURB_STD, "data_vocab": DATA_VOCAB, "train_seed": TRAIN_SEED,
        "train_tokens": TRAIN_TOKENS, "val_seed": VAL_SEED, "val_tokens": VAL_TOKENS,
    }
    dist.destroy_process_group()
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
