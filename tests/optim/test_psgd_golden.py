"""Parity of track3-psgd with track-3 result #33 (PSGD Kron with the hyperball): tests/golden/20260527_psgd.json, the
result's own train_psgd.py run by scripts/track3_golden.py at 2 layers, d=256 (2 heads of 128), 2 rows of 64 tokens,
vocab 50304, fp32, one thread, 5 steps on a 5-step horizon (PSGD lr .025 -> .005; the AdamW scale 1, 1, 1, .7, .4),
the generator seeded with 1234 before the model's construction and again before the script's re-draw of the hidden
matrices, which also fixes the preconditioners' probes (two randn_like per matrix per step, largest matrix first).

Our trainer (train.Trainer, the track3 preset shrunk to that shape, the recipe, the same horizon) from the golden's
seed must give:
  - every parameter's init fingerprint: entries equal, norm and sum within 1e-12 (bitwise on this project's CPUs);
  - the mean loss and every gradient at the golden's perturbed state within 1e-5 relative;
  - each group's static hyper-parameters and its lr at every step as the reference set them (1e-12), and the
    hidden matrices stepped in the reference's order;
  - every step's loss and every parameter's norm after each step within DRIFT_FACTOR = 4 times the golden's
    self_drift of that figure, at least LOSS_FLOOR = 5e-7 for a loss and NORM_FLOOR = 1e-9 for a norm; the val loss
    before within 1e-5 and after within 4 × the val drift (at least LOSS_FLOOR).
The golden's self_drift (its largest relative distance to the reference's peers, 2 threads and no SIMD, over the 5
steps): losses 1.1e-7, val 0, parameter norms 4.1e-7 (worst blocks.0.attn.k.weight). The hidden matrices' norms stay
at their init radius under the hyperball whatever the direction: the preconditioned direction shows in the losses of
steps 1-4, the val loss after the last step and the other parameters' norms.
Measured on the recording's kind of CPU (AVX2, one thread): every parameter's norm after every step bitwise equal to
the golden's, every loss and both val losses within one fp32 rounding (the mean's summation order), which
test_bitwise_where_the_reference_s_cpu_is asserts there.

The loss is the mean over tokens: the trainer's mean path backpropagates each micro-batch's mean / accum (the
script's / num_mbs), averages over ranks (its AVG all-reduce), and validates by the mean of the micro-batches'
means, AVG over ranks (its val_denominator "microbatches").
"""

import json
from pathlib import Path

import pytest
import torch

import train
from data.shards import write_shard
from model.gpt import GPT
from optim.roles import param_groups
from speedrun.config import resolve, resolve_auto
from tests.test_track3_golden import our_name

FOLDER = "20260527_psgd"
GOLDEN = json.loads((Path(__file__).parents[1] / "golden" / f"{FOLDER}.json").read_text())
META = GOLDEN["meta"]
RTOL = 1e-5
DRIFT_FACTOR = 4.0
LOSS_FLOOR = 5e-7
NORM_FLOOR = 1e-9
# The reference's static hyper-parameter names -> ours, per optimizer class.
STATIC = {"AdamW": {"betas": "betas", "eps": "eps", "weight_decay": "weight_decay"},
          "PSGDKron": {"beta1": "momentum", "precond_lr": "precond_lr"}}


def config(tmp_path: Path, *extra: str):
    """The recipe on the track3 preset at the golden's shape and horizon, over shards of the golden's streams."""
    g = torch.Generator()
    train_stream = torch.randint(0, META["data_vocab"], (META["train_tokens"],),
                                 generator=g.manual_seed(META["train_seed"]))
    val_stream = torch.randint(0, META["data_vocab"], (2 * META["val_tokens"] + 1,),
                               generator=g.manual_seed(META["val_seed"]))
    write_shard(tmp_path / "g_train_000000.bin", train_stream.numpy())
    write_shard(tmp_path / "g_val_000000.bin", val_stream.numpy())
    s = META["shape"]
    return resolve([
        "--preset=track3", "--optimizer=track3-psgd", f"--data_dir={tmp_path}", "--train_pattern=g_train_*.bin",
        "--val_pattern=g_val_*.bin", f"--out_dir={tmp_path / 'runs'}", f"--model.n_layer={s['n_layer']}",
        f"--model.n_embd={s['dim']}", f"--model.n_head={s['dim'] // 128}", f"--model.max_seq_len={s['seq']}",
        f"--batch_size={s['rows']}", f"--seq_len={s['seq']}", "--reference_world_size=1",
        f"--max_steps={META['steps']}", f"--schedule_steps={META['horizon']}", f"--val_tokens={META['val_tokens']}",
        f"--val_every={META['horizon']}", "--val_every_late=0", "--dtype=fp32", "--compile=False", "--threads=1",
        # the reference's loss formulation (see tests/test_track3_golden.py)
        "--log_every=1", "--model.linear_cross_entropy_impl=eager",
        *extra])


def seed_init(model: GPT):
    """The harness's seeding: the seed, the construction init, the seed again, the script's re-draw (which leaves
    the generator where the script's first step finds it)."""
    seed = META["init_seed"]
    torch.manual_seed(seed)
    model.init_rule()
    torch.manual_seed(seed)
    model.redraw_hidden()
    model.init_edits()


def within(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= rtol * max(abs(got), abs(want))


def test_the_recipe_s_init_is_the_script_s(tmp_path):
    model = GPT(resolve_auto(config(tmp_path), torch.device("cpu")).model)
    seed_init(model)
    params = dict(model.named_parameters())
    for ref, want in GOLDEN["init"].items():
        p = params[our_name(ref)].detach().double().flatten()
        assert p[:2].tolist() == want["first"] and p[-2:].tolist() == want["last"], ref
        assert p.norm().item() == pytest.approx(want["norm"], rel=1e-12, abs=0), ref
        assert p.sum().item() == pytest.approx(want["sum"], rel=1e-12, abs=1e-12 * max(want["norm"], 1.0)), ref


def test_mean_loss_and_every_gradient_at_the_perturbed_state(tmp_path):
    model = GPT(resolve_auto(config(tmp_path), torch.device("cpu")).model)
    seed_init(model)
    params = dict(model.named_parameters())
    with torch.no_grad():  # the golden script's perturbation: parameter i of the reference's order, seed i
        for i, ref in enumerate(GOLDEN["init"]):
            p = params[our_name(ref)]
            p.add_(META["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    rows, seq = META["shape"]["rows"], META["shape"]["seq"]
    stream = torch.randint(0, META["data_vocab"], (META["train_tokens"],),
                           generator=torch.Generator().manual_seed(META["train_seed"]))[: rows * seq + 1]
    loss = model(stream[:-1].view(rows, seq), stream[1:].view(rows, seq))
    loss.backward()
    assert loss.item() == pytest.approx(GOLDEN["perturbed"]["loss"], rel=RTOL)  # a mean: no division by tokens
    for i, (ref, grad) in enumerate(GOLDEN["perturbed"]["grads"].items()):
        gr = params[our_name(ref)].grad.double()
        r = torch.randn(gr.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert gr.norm().item() == pytest.approx(grad["norm"], rel=RTOL), ref
        assert abs((gr * r).sum().item() - grad["probe"]) <= RTOL * grad["norm"] * r.norm().item(), ref


def run(tmp_path: Path, *extra: str) -> dict:
    """The trainer from the golden's seeded init: the mean loss, every parameter's norm (our names) and each role's
    lr at each step, the val losses, the model and the optimizer's param groups."""
    trainer = train.Trainer(config(tmp_path, *extra))
    seed_init(trainer.model)
    norms, lrs, step = [], [], trainer.parallel.step

    def step_and_record():
        lrs.append({g["role"]: g["lr"] for g in trainer.optimizer.param_groups})
        step()
        norms.append({n: p.detach().double().norm().item() for n, p in trainer.model.named_parameters()})

    trainer.parallel.step = step_and_record
    summary = trainer.run()
    log = [json.loads(line) for line in open(Path(summary["run_dir"]) / "log.jsonl")]
    return {"losses": [r["train_loss"] for r in log if "train_loss" in r], "norms": norms[1:], "lrs": lrs[1:],
            "vals": [r["val_loss"] for r in log if "val_loss" in r], "model": trainer.model,
            "groups": trainer.optimizer.param_groups}  # [1:]: the trainer's warm-up step comes first


def check_trajectory(ours: dict) -> list[str]:
    """Where `ours` leaves the golden's steps by more than the drift tolerance (module docstring); [] = within."""
    drift = GOLDEN["self_drift"]
    out = []
    assert len(ours["losses"]) == len(ours["norms"]) == META["steps"]
    for k, want in enumerate(GOLDEN["steps"]):
        rtol = max(DRIFT_FACTOR * drift["loss_per_step"][k], LOSS_FLOOR)
        if not within(ours["losses"][k], want["loss"], rtol):
            out.append(f"step {k} loss {ours['losses'][k]} vs {want['loss']} (rtol {rtol:.3g})")
        for ref, norm in want["norms"].items():
            rtol = max(DRIFT_FACTOR * drift["norms"][ref], NORM_FLOOR)
            if not within(ours["norms"][k][our_name(ref)], norm, rtol):
                out.append(f"step {k} {ref} norm {ours['norms'][k][our_name(ref)]} vs {norm} (rtol {rtol:.3g})")
    if not within(ours["vals"][0], GOLDEN["val_loss_before"], RTOL):
        out.append(f"val before {ours['vals'][0]} vs {GOLDEN['val_loss_before']}")
    rtol = max(DRIFT_FACTOR * drift["val"], LOSS_FLOOR)
    if not within(ours["vals"][-1], GOLDEN["val_loss_after"], rtol):
        out.append(f"val after {ours['vals'][-1]} vs {GOLDEN['val_loss_after']} (rtol {rtol:.3g})")
    return out


def check_hparams(ours: dict) -> list[str]:
    """Each reference group's static hyper-parameters and per-step lr against our group of the same parameters, and
    the hidden matrices' order (the order the probes are drawn in)."""
    groups = param_groups(ours["model"])
    role = {groups.names[p]: r for r, ps in groups.items() for p in ps}
    ref_role, out = {}, []
    ours_by_role = {group["role"]: group for group in ours["groups"]}
    for entry in GOLDEN["param_groups"]:
        roles = {role[our_name(name)] for name in entry["params"]}
        assert len(roles) == 1, (entry, roles)  # each reference group is one of our roles
        ref_role[f"{entry['optimizer']}.group{entry['group']}"] = r = roles.pop()
        order = [groups.names[p] for p in ours_by_role[r]["params"]]
        if r == "hidden" and order != [our_name(name) for name in entry["params"]]:
            out.append(f"hidden order {order}")
    for key, value in GOLDEN["hparams_static"].items():
        group, name = key.rsplit(".", 1)
        mine = STATIC[group.split("#")[0]][name]
        got = ours_by_role[ref_role[group]][mine]
        if (list(got) if isinstance(got, tuple) else got) != pytest.approx(value, rel=1e-12):
            out.append(f"{key} = {value}, ours {mine} = {got}")
    for k, step in enumerate(GOLDEN["steps"]):
        for key, value in step["hparams"].items():
            group, name = key.rsplit(".", 1)
            if ours["lrs"][k][ref_role[group]] != pytest.approx(value, rel=1e-12, abs=1e-15):
                out.append(f"step {k} {key} = {value}, ours {ours['lrs'][k][ref_role[group]]}")
    return out


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("psgd"))


def test_the_recipe_s_steps_match_the_script_s(ours):
    assert check_hparams(ours) == []
    assert check_trajectory(ours) == []


def test_bitwise_where_the_reference_s_cpu_is(ours):
    """On the recording's kind of CPU every parameter's norm after every step equals the golden's own run bit for bit
    (the same fp32 arithmetic in the same order, the same probes), and every loss and the val losses are within one
    fp32 rounding of it: our mean is the sum of the per-token losses divided by their count, the script's is
    F.cross_entropy's own mean reduction (another summation order of the same values; the gradients are the same)."""
    if torch.backends.cpu.get_cpu_capability() != META["cpu_capability"]:
        pytest.skip(f"the golden was recorded under {META['cpu_capability']}, this CPU runs "
                    f"{torch.backends.cpu.get_cpu_capability()}")
    one_rounding = torch.finfo(torch.float32).eps
    for k, want in enumerate(GOLDEN["steps"]):
        assert {r: ours["norms"][k][our_name(r)] for r in want["norms"]} == want["norms"], k
        assert within(ours["losses"][k], want["loss"], one_rounding), k
    assert within(ours["vals"][0], GOLDEN["val_loss_before"], one_rounding)
    assert within(ours["vals"][-1], GOLDEN["val_loss_after"], one_rounding)


def test_the_drift_tolerances_admit_the_reference_against_its_peers():
    """The tolerances hold the reference's own peer runs: the test states a drift the reference itself shows."""
    for key in (k for k in GOLDEN if k.startswith("steps_")):
        peer = {"losses": [s["loss"] for s in GOLDEN[key]],
                "norms": [{our_name(r): v for r, v in s["norms"].items()} for s in GOLDEN[key]],
                "vals": [GOLDEN["val_loss_before"], GOLDEN["val_loss_after" + key[len("steps"):]]]}
        assert check_trajectory(peer) == [], key


@pytest.mark.parametrize("planted", ["--optim.precond_lr=0.9", "--optim.momentum=0.9", "--optim.init_scale=1.0"])
def test_a_wrong_hyper_parameter_leaves_the_golden(planted, tmp_path):
    """The trajectory check fails for a recipe that differs from the script in one PSGD hyper-parameter."""
    assert check_trajectory(run(tmp_path, planted)) != []
