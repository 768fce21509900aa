"""Parity of the track3-record recipe with track 3's record, result #46 (records/track_3_optimization/results/
20260619_cwd_rowfloor_tailema/train_gpt_cwd_SOTA.py), through tests/golden/20260619_cwd_rowfloor_tailema.json.

The golden is scripts/track3_golden.py's run of that script at 2 layers, d=256 (2 heads of 128), 2 rows of 64
tokens, fp32 activations, one thread, its schedule points moved so that 10 steps cross them all (the adapter
scripts/track3_adapters/20260619_cwd_rowfloor_tailema.py): horizon 10, every PowerCool coefficient × (2900/10)^1.2,
momentum warm-up and cool-down 3 steps each, the trust gate's floor fading from update 4 to 6, the EMA-Nesterov
window [2, 9), the Tail-EMA from step 6 to 10 with tau 4, the antithetic gain pairs from block 1 with the script's
seed 0. The same points are set here as options of the recipe's parts (golden_options), nothing else changes.

Checked: the init fingerprints bit for bit (the golden seeds the generator with 1234 before the model is built and
again before the script's init rule: GPT.init_rule, then GPT.init_edits, each after that seed); the loss and
every gradient at a perturbed init within 1e-5 relative (a gradient by its norm and by a seeded probe <g, r>:
|Δ<g, r>| <= 1e-5·|g|·|r|); the trainer's 10 steps: every lr, the momentum and the look-ahead scale as the script
set them (to 1e-12), the training losses, every parameter's norm after each step, and the final validation of
the raw weights and of the Tail-EMA blend.

Tolerances. The golden's peer (the same script with its bf16 GEMMs emulated: fp32 GEMMs of the bf16 operands,
rounded) moves the figures by its self_drift: losses up to 7.0e-6 (0 for steps 0-2, before any bf16 GEMM of a
non-zero momentum reaches the loss), the val losses 7.1e-6, parameter norms from 8.6e-9 (the embedding) to
1.1e-2 (blocks.0.mlp.fc.bias). Here: the loss within 1e-5 through step 2 and 3 × the largest loss drift after,
each parameter's norm within 3 × its own drift (plus 1e-7 relative), the val losses within 3 × the val drift.
Our trainer emulates bf16 GEMMs on a CPU without native bf16 as the peer does: on the recording machine (AVX2) it
reproduces the peer's norms bit for bit and its val losses exactly, its losses within 1.1e-7 (the loss's
reduction order), so its distance to the golden is the peer's, ~1.0 × the drift for every parameter.

A part switched off alone fails this comparison (test_switching_a_part_off_fails_the_golden, --runslow: every
part of the recipe, one at a time).
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import train
from data.shards import write_shard
from model.gpt import GPT
from speedrun.config import resolve
from tests.test_track3_golden import our_name

GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / "20260619_cwd_rowfloor_tailema.json").read_text())
META = GOLDEN["meta"]
DRIFT = GOLDEN["self_drift"]
RTOL = 1e-5
DRIFT_FACTOR = 3.0
TOKENS = META["shape"]["rows"] * META["shape"]["seq"]
RECORD_END = 2900  # the script's schedule horizon


def golden_options(*options: str) -> list[str]:
    """The adapter's schedule points, as options of track3-record's parts (the recipe states them for 2900 steps);
    those of a part that `options` remove (--wrapper=none, --readout=none) are left out."""
    steps, k = META["steps"], META["steps"] / RECORD_END
    removed = tuple(f"--{o[2:].split('=')[0]}." for o in options if o.endswith("=none"))
    return [o for o in _points(steps, k) if not o.startswith(removed)] if removed else _points(steps, k)


def _points(steps: int, k: float) -> list[str]:
    return [f"--max_steps={steps}", f"--schedule_steps={steps}", f"--schedule.end={steps}",
            f"--schedule.flat_until={513.6 * k}", f"--schedule.aux_flat_until={1487.0 * k}",
            "--schedule.momentum.warmup_steps=3", "--schedule.momentum.cooldown_steps=3",
            "--optim.trust_floor_end=4", "--optim.trust_fade_end=6",
            "--wrapper.prefill_steps=2", f"--wrapper.rest_steps={steps - 1}",
            "--readout.start=6", f"--readout.end={steps}", "--readout.tau=4.0",
            "--model.init_gain_pairs_from=1", "--model.init_gain_seed=0"]


def golden_model() -> GPT:
    shape = META["shape"]
    cfg = resolve(["--preset=track3", "--optimizer=track3-record", *golden_options()]).model
    model = GPT(dataclasses.replace(cfg, n_layer=shape["n_layer"], n_embd=shape["dim"], n_head=shape["dim"] // 128,
                                    max_seq_len=shape["seq"], linear_cross_entropy_impl="eager", attention_impl="sdpa",
                                    relu2_mlp_impl="eager"))
    golden_init(model)
    return model


@torch.no_grad()
def golden_init(model: GPT):
    """The golden's init: the construction init after seeding 1234, then the record's rule after seeding again."""
    torch.manual_seed(META["init_seed"])
    model.init_rule()
    torch.manual_seed(META["init_seed"])
    model.init_edits()


def streams() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator()
    train_stream = torch.randint(0, META["data_vocab"], (META["train_tokens"],),
                                 generator=g.manual_seed(META["train_seed"]))
    val_stream = torch.randint(0, META["data_vocab"], (2 * META["val_tokens"] + 1,),
                               generator=g.manual_seed(META["val_seed"]))
    return train_stream, val_stream


def fingerprint(p: torch.Tensor) -> dict:
    p = p.detach().double().flatten()
    return {"norm": p.norm().item(), "sum": p.sum().item(), "first": p[:2].tolist(), "last": p[-2:].tolist()}


def test_init_is_the_reference_s_bit_for_bit():
    params = dict(golden_model().named_parameters())
    assert sorted(our_name(n) for n in GOLDEN["init"]) == sorted(params)
    for ref, want in GOLDEN["init"].items():
        assert fingerprint(params[our_name(ref)]) == want, ref


def test_loss_and_every_gradient_at_a_perturbed_init():
    model = golden_model()
    params = dict(model.named_parameters())
    with torch.no_grad():  # the golden's perturbation: parameter i of the reference's order, seed i
        for i, ref in enumerate(GOLDEN["init"]):
            p = params[our_name(ref)]
            p.add_(META["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    rows, seq = META["shape"]["rows"], META["shape"]["seq"]
    buf = streams()[0][: rows * seq + 1]
    loss = model(buf[:-1].view(rows, seq), buf[1:].view(rows, seq))
    loss.backward()
    want = GOLDEN["perturbed"]
    assert loss.item() == pytest.approx(want["loss"], rel=RTOL)
    for i, (ref, grad) in enumerate(want["grads"].items()):
        g = params[our_name(ref)].grad.double()
        r = torch.randn(g.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert g.norm().item() == pytest.approx(grad["norm"], rel=RTOL), ref
        assert abs((g * r).sum().item() - grad["probe"]) <= RTOL * grad["norm"] * r.norm().item(), ref


def run_record(tmp_path: Path, *options: str) -> dict:
    """The trainer with track3-record at the golden's size and schedule points (plus `options`): per step the
    loss per token, every parameter's norm before the forward (after the look-ahead) and after the step, the
    hyper-parameters the step used; the validation records."""
    train_stream, val_stream = streams()
    write_shard(tmp_path / "g_train_000000.bin", train_stream.numpy())
    write_shard(tmp_path / "g_val_000000.bin", val_stream.numpy())
    shape, steps = META["shape"], META["steps"]
    cfg = resolve(["--preset=track3", "--optimizer=track3-record", f"--data_dir={tmp_path}",
                   "--train_pattern=g_train_*.bin", "--val_pattern=g_val_*.bin", f"--out_dir={tmp_path / 'runs'}",
                   f"--model.n_layer={shape['n_layer']}", f"--model.n_embd={shape['dim']}",
                   f"--model.n_head={shape['dim'] // 128}", f"--model.max_seq_len={shape['seq']}",
                   f"--batch_size={shape['rows']}", f"--seq_len={shape['seq']}", "--reference_world_size=1",
                   f"--val_tokens={META['val_tokens']}", f"--val_every={steps}", "--dtype=fp32", "--compile=False",
                   "--threads=1", "--log_every=1", "--model.linear_cross_entropy_impl=eager",
                   *golden_options(*options), *options])
    trainer = train.Trainer(cfg)
    golden_init(trainer.model)
    model, optimizer, step = trainer.model, trainer.optimizer, trainer.parallel.step
    out = {"norms": [], "at_forward": [], "hparams": []}

    def norms():
        return {n: p.detach().double().norm().item() for n, p in model.named_parameters()}

    def step_and_record():
        out["at_forward"].append(norms())
        step()
        out["norms"].append(norms())
        hparams = {f"{g['role']}.{g.get('family', '')}.lr": g["lr"] for g in optimizer.param_groups}
        hparams.update({"hidden.momentum": g["momentum"] for g in optimizer.param_groups if g["role"] == "hidden"})
        hparams["lookahead"] = getattr(optimizer, "shift", None)
        out["hparams"].append(hparams)

    trainer.parallel.step = step_and_record
    summary = trainer.run()
    log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
    out["losses"] = [r["train_loss"] for r in log if "train_loss" in r]
    out["vals"] = [r for r in log if "val_loss" in r]
    for key in ("norms", "at_forward", "hparams"):
        out[key] = out[key][1:]  # the trainer's warm-up step, undone before the run
    return out


# the golden's hyper-parameter names -> ours (role.family.lr)
HPARAMS = {"AdamW#0.group0.lr": "embed..lr", "AdamW#0.group1.lr": "head..lr", "Adam#1.group0.lr": "scalar.gain.lr",
           "Adam#1.group1.lr": "scalar.bias.lr", "Adam#1.group2.lr": "scalar.attn_proj_bias.lr",
           "Muon#2.group0.lr": "hidden..lr", "Muon#2.group0.mu": "hidden.momentum",
           "EMA_Nesterov#3.current_lookahead_stepsize": "lookahead"}


def within(ours: float, want: float, rtol: float) -> bool:
    return abs(ours - want) <= rtol * max(abs(want), abs(ours))


def mismatches(run: dict) -> list[str]:
    """Every figure of `run` outside its tolerance against the golden (empty: parity)."""
    bad = []
    if len(run["losses"]) != META["steps"]:
        return [f"{len(run['losses'])} steps, the golden has {META['steps']}"]
    for k, want in enumerate(GOLDEN["steps"]):
        loss = run["losses"][k] * TOKENS
        rtol = RTOL if k <= 2 else DRIFT_FACTOR * DRIFT["loss"]
        if not within(loss, want["loss"], rtol):
            bad.append(f"step {k} loss {loss} vs {want['loss']}")
        for ref, norm in want["norms"].items():
            ours = run["norms"][k][our_name(ref)]
            if not within(ours, norm, DRIFT_FACTOR * DRIFT["norms"][ref] + 1e-7):
                bad.append(f"step {k} {ref} norm {ours} vs {norm}")
        for ref, norm in want.get("norms_at_forward", {}).items():
            ours = run["at_forward"][k][our_name(ref)]
            if not within(ours, norm, DRIFT_FACTOR * DRIFT["norms"][ref] + 1e-7):
                bad.append(f"step {k} {ref} norm at the forward {ours} vs {norm}")
        for name, ours_name in HPARAMS.items():
            ours = run["hparams"][k].get(ours_name)
            if ours is None or not within(ours, want["hparams"][name], 1e-12):
                bad.append(f"step {k} {name} {ours} vs {want['hparams'][name]}")
    before, after = run["vals"][0], run["vals"][-1]
    if not within(before["val_loss"], GOLDEN["val_loss_before"], RTOL):
        bad.append(f"val loss before {before['val_loss']} vs {GOLDEN['val_loss_before']}")
    passes = {p["label"]: p["loss"] for p in GOLDEN["val_passes"] if p["after_steps"] == META["steps"]}
    raw = after.get("val_loss_raw", after["val_loss"])
    for label, ours in (("val_loss", raw), ("val_ema_loss", after["val_loss"])):
        if not within(ours, passes[label], DRIFT_FACTOR * DRIFT["val"]):
            bad.append(f"{label} after {ours} vs {passes[label]}")
    return bad


def test_the_tolerances_admit_the_reference_s_peer():
    """The golden's own peer (bf16 GEMMs emulated) passes the comparison: the tolerances hold the drift."""
    passes = {p["label"]: p["loss"] for p in GOLDEN["val_passes_emulated_bf16"]}
    peer = {"losses": [s["loss"] / TOKENS for s in GOLDEN["steps_emulated_bf16"]],
            "norms": [{our_name(r): v for r, v in s["norms"].items()} for s in GOLDEN["steps_emulated_bf16"]],
            "at_forward": [{our_name(r): v for r, v in s["norms"].items()} for s in GOLDEN["steps"]],
            "hparams": [{ours: s["hparams"][name] for name, ours in HPARAMS.items()} for s in GOLDEN["steps"]],
            "vals": [{"val_loss": GOLDEN["val_loss_before"]}, {"val_loss_raw": passes["val_loss"],
                                                                "val_loss": passes["val_ema_loss"]}]}
    for k, s in enumerate(GOLDEN["steps"]):  # the look-ahead's norms as the golden recorded them
        peer["at_forward"][k] = {our_name(r): v for r, v in s.get("norms_at_forward", s["norms"]).items()}
    assert mismatches(peer) == []


def test_ten_steps_of_track3_record_match_the_reference(tmp_path):
    run = run_record(tmp_path)
    assert len(run["vals"]) == 2 and "val_loss_raw" in run["vals"][-1]
    assert mismatches(run) == []


# Each part of the record switched off alone, as its option does it: the comparison must fail.
PARTS_OFF = {
    "soap": ["--optim.soap=False"],
    "trust_gate": ["--optim.trust_gate=False"],
    "blend_norm": ["--optim.blend_norm=False"],
    "soap_resort": ["--optim.soap_resort=False"],
    "schatten4_ns": ["--optim.ns_norm=frobenius"],
    "radial_brake": ["--optim.radial_outward=1.0"],
    "row_floor": ["--optim.update_floor=none"],
    "row_floor_as_matrix_floor": ["--optim.update_floor=matrix"],
    "radius_pin": ["--optim.radius_pin=False"],
    "cautious_wd": ["--optim.cautious_wd=0.0"],
    "adam_1d_without_bias_correction": ["--optim.adam_1d_bias_correction=True"],
    "aux_beta2_per_family": ["--optim.aux_beta2_per_family=False"],
    "momentum_ramp": ["--schedule.momentum.warmup_steps=0", "--schedule.momentum.cooldown_steps=0"],
    "power_cool": ["--schedule.coefficients=False", "--schedule.power=1.0"],
    "ema_nesterov": ["--wrapper=none"],
    "tail_ema": ["--readout=none"],
    "zero_init_proj": ["--model.zero_init_proj=False", "--model.zero_init_proj_bias=False"],
    "fc_depth_scale": ["--model.init_fc_depth_scale=0.0"],
    "gain_split": ["--model.init_gain_split=0.0"],
    "gain_head_balance": ["--model.init_gain_head_balance=1.0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("part", sorted(PARTS_OFF))
def test_switching_a_part_off_fails_the_golden(tmp_path, part):
    """Every part of the recipe is exercised by the golden: without it, some figure leaves its tolerance."""
    assert mismatches(run_record(tmp_path, *PARTS_OFF[part]))


def test_a_wrong_trust_gate_fails_the_golden(tmp_path):
    """The comparison can fail: the attention output projection without its trust gate."""
    bad = mismatches(run_record(tmp_path, *PARTS_OFF["trust_gate"]))
    assert any("attn.proj.weight" in b for b in bad), bad
