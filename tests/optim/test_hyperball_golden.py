"""Parity of the hyperball family with track-3 results #4 AdamH, #5 MuonH, #37 MuonH re-tuned, #8 NorMuonH and #13
MuLoCo over NorMuonH: tests/golden/<folder>.json, each result's own script run by scripts/track3_golden.py at 2
layers, d=256 (2 heads of 128), 2 rows of 64 tokens, vocab 50304, fp32 (the Newton-Schulz in bf16), one thread,
with its schedule points moved as its adapter (scripts/track3_adapters/<folder>.py) says: #4's warm-up 250 -> 2
steps, #13's sync interval 30 -> 3 (6 steps: outer steps after steps 3 and 6).

Our trainer (train.Trainer, the track3 preset shrunk to that shape, the result's recipe, the same adapted points)
from the golden's seed must give:
  - every parameter's init fingerprint: entries equal, norm and sum within 1e-12 (bitwise on this project's CPUs);
  - the loss and every gradient at the golden's perturbed state within 1e-5 relative (a gradient by its norm and by
    a seeded probe <g, r>, as tests/test_track3_golden.py);
  - each optimizer group's static hyper-parameters, and its lr at every step, as the reference set them (1e-12);
  - every step's loss and every parameter's norm after each step within DRIFT_FACTOR = 4 times the golden's
    self_drift of that figure (its largest relative distance to the reference's peer run: the bf16 GEMMs emulated
    for the Newton-Schulz results; 2 threads and no SIMD for AdamH), at least LOSS_FLOOR = 5e-7 for a loss (the
    summed fp32 loss is reported per token: one rounding of the sum, 1.2e-7, separates the two where the drift
    is 0) and NORM_FLOOR = 1e-9 for a norm; the val loss before within 1e-5 and after within 4 × the val drift.
The golden's self_drift (loss / largest parameter norm / val): #4 1.2e-7 / 1.9e-7 / 0, #5 (logs) 2.5e-6 / 1.1e-4 /
2.8e-7, #5 (.py) 1.1e-5 / 8.8e-4 / 5.4e-5, #37 7.3e-5 / 7.1e-4 / 1.7e-4, #8 1.4e-6 / 1.7e-4 / 3.4e-6, #13 1.8e-5 /
1.5e-4 / 7.4e-6. Measured on the recording's kind of CPU (AVX2, one thread): #4 every norm and the final val loss
bitwise equal to the golden's; #5, #37, #8 and #13 every norm bitwise equal to the emulated-bf16 peer's (our
Newton-Schulz emulates bf16 the same way on a CPU without native bf16), which
test_the_norms_are_bitwise_the_peer_s_where_the_peer_is_ours asserts there.

The hidden matrices' norms stay at their init radius under the hyperball whatever the direction: the update itself
shows in the losses and in the other parameters' norms. #5 has two goldens: <folder>.log.json runs the script of its
published logs (the recipe's: PyTorch's init, fp32 RMSNorm), <folder>.json the folder's later .py, whose init the
recipe takes with the .py's model fields (optim.hyperball.TRACK3_HYPERBALL_INIT).
"""

import json
from pathlib import Path

import pytest
import torch

import train
from data.shards import write_shard
from kernels.device import native_bf16
from model.config import model_preset
from model.gpt import GPT
from optim.hyperball import TRACK3_HYPERBALL_INIT
from optim.roles import param_groups
from speedrun.config import resolve, resolve_auto
from tests.test_track3_golden import our_name

GOLDENS = Path(__file__).parents[1] / "golden"
RTOL = 1e-5
DRIFT_FACTOR = 4.0
LOSS_FLOOR = 5e-7
NORM_FLOOR = 1e-9
# folder -> (recipe, the command-line options that move its schedule points as the golden's adapter did)
RESULTS = {
    "20260430_adamh": ("track3-adamh", ["--schedule.matrix_warmup_steps=2"]),
    "20260430_muonh.log": ("track3-muonh", []),  # the script of the published logs, which the recipe follows
    "20260430_muonh": ("track3-muonh", [f"--{k}={v}" for k, v in TRACK3_HYPERBALL_INIT.items()]
                       + ["--model.norm_fp32=False"]),  # the folder's .py: the recipe with the .py's init
    "20260611_muonh_tuned_aux_3250": ("track3-muonh-tuned", []),
    "20260430_normuonh": ("track3-normuonh", []),
    "20260504_muloco_normuonh": ("track3-muloco-normuonh", ["--wrapper.sync_interval=3"]),
}
# The reference's static hyper-parameter names -> ours, per optimizer class (hparams_static: "Class#i.groupj.name").
STATIC = {"AdamW": {"betas": "betas", "eps": "eps", "initial_lr": "initial_lr", "weight_decay": "weight_decay"},
          "AdamH": {"betas": "betas", "eps": "eps", "initial_lr": "initial_lr"},
          "MuonH": {"initial_lr": "initial_lr", "mu": "momentum"},
          "NorMuonH": {"initial_lr": "initial_lr", "mu": "momentum", "beta2": "beta2", "eps": "norm_eps"}}


def golden(folder: str) -> dict:
    return json.loads((GOLDENS / f"{folder}.json").read_text())


def config(folder: str, tmp_path: Path, *extra: str):
    """The recipe on the track3 preset at the golden's shape, horizon and adapted schedule points, over shards of the
    golden's token streams."""
    meta = golden(folder)["meta"]
    g = torch.Generator()
    train_stream = torch.randint(0, meta["data_vocab"], (meta["train_tokens"],),
                                 generator=g.manual_seed(meta["train_seed"]))
    val_stream = torch.randint(0, meta["data_vocab"], (2 * meta["val_tokens"] + 1,),
                               generator=g.manual_seed(meta["val_seed"]))
    write_shard(tmp_path / "g_train_000000.bin", train_stream.numpy())
    write_shard(tmp_path / "g_val_000000.bin", val_stream.numpy())
    recipe, adapted = RESULTS[folder]
    s = meta["shape"]
    return resolve([
        "--preset=track3", f"--optimizer={recipe}", f"--data_dir={tmp_path}", "--train_pattern=g_train_*.bin",
        "--val_pattern=g_val_*.bin", f"--out_dir={tmp_path / 'runs'}", f"--model.n_layer={s['n_layer']}",
        f"--model.n_embd={s['dim']}", f"--model.n_head={s['dim'] // 128}", f"--model.max_seq_len={s['seq']}",
        f"--batch_size={s['rows']}", f"--seq_len={s['seq']}", "--reference_world_size=1",
        f"--max_steps={meta['steps']}", f"--schedule_steps={meta['horizon']}", f"--val_tokens={meta['val_tokens']}",
        f"--val_every={meta['horizon']}", "--val_every_late=0", "--dtype=fp32", "--compile=False", "--threads=1",
        # the reference's loss formulation (see tests/test_track3_golden.py)
        "--log_every=1", "--model.linear_cross_entropy_impl=eager",
        *adapted, *extra])


def seeded_model(folder: str, tmp_path: Path) -> GPT:
    cfg = resolve_auto(config(folder, tmp_path), torch.device("cpu"))
    model = GPT(cfg.model)
    torch.manual_seed(golden(folder)["meta"]["init_seed"])
    model.reset_parameters()
    return model


def within(got: float, want: float, rtol: float) -> bool:
    return abs(got - want) <= rtol * max(abs(got), abs(want))


@pytest.mark.parametrize("folder", sorted(RESULTS))
def test_the_recipe_s_init_is_the_script_s(folder, tmp_path):
    params = dict(seeded_model(folder, tmp_path).named_parameters())
    for ref, want in golden(folder)["init"].items():
        p = params[our_name(ref)].detach().double().flatten()
        assert p[:2].tolist() == want["first"] and p[-2:].tolist() == want["last"], ref
        assert p.norm().item() == pytest.approx(want["norm"], rel=1e-12, abs=0), ref
        assert p.sum().item() == pytest.approx(want["sum"], rel=1e-12, abs=1e-12 * max(want["norm"], 1.0)), ref


@pytest.mark.parametrize("folder", sorted(RESULTS))
def test_loss_and_every_gradient_at_the_perturbed_state(folder, tmp_path):
    g = golden(folder)
    meta = g["meta"]
    model = seeded_model(folder, tmp_path)
    params = dict(model.named_parameters())
    with torch.no_grad():  # the golden script's perturbation: parameter i of the reference's order, seed i
        for i, ref in enumerate(g["init"]):
            p = params[our_name(ref)]
            p.add_(meta["perturb_std"] * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
    rows, seq = meta["shape"]["rows"], meta["shape"]["seq"]
    stream = torch.randint(0, meta["data_vocab"], (meta["train_tokens"],),
                           generator=torch.Generator().manual_seed(meta["train_seed"]))[: rows * seq + 1]
    loss = model(stream[:-1].view(rows, seq), stream[1:].view(rows, seq))
    loss.backward()
    assert loss.item() == pytest.approx(g["perturbed"]["loss"], rel=RTOL)
    for i, (ref, grad) in enumerate(g["perturbed"]["grads"].items()):
        gr = params[our_name(ref)].grad.double()
        r = torch.randn(gr.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        assert gr.norm().item() == pytest.approx(grad["norm"], rel=RTOL), ref
        assert abs((gr * r).sum().item() - grad["probe"]) <= RTOL * grad["norm"] * r.norm().item(), ref


def run(folder: str, tmp_path: Path, *extra: str) -> dict:
    """The trainer from the golden's seeded init: losses per token, every parameter's norm (our names) and each
    role's lr after each step, and the val losses, and the optimizer's param groups."""
    cfg = config(folder, tmp_path, *extra)
    trainer = train.Trainer(cfg)
    torch.manual_seed(golden(folder)["meta"]["init_seed"])
    trainer.model.reset_parameters()
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
            "groups": trainer.optimizer.param_groups}


def check_trajectory(folder: str, ours: dict) -> list[str]:
    """Where `ours` leaves the golden's steps by more than the drift tolerance (module docstring); [] = within."""
    g = golden(folder)
    tokens = g["meta"]["shape"]["rows"] * g["meta"]["shape"]["seq"]
    drift = g["self_drift"]
    out = []
    assert len(ours["losses"]) == len(ours["norms"]) == g["meta"]["steps"]
    for k, want in enumerate(g["steps"]):
        rtol = max(DRIFT_FACTOR * drift["loss_per_step"][k], LOSS_FLOOR)
        if not within(ours["losses"][k], want["loss"] / tokens, rtol):
            out.append(f"step {k} loss {ours['losses'][k]} vs {want['loss'] / tokens} (rtol {rtol:.3g})")
        for ref, norm in want["norms"].items():
            rtol = max(DRIFT_FACTOR * drift["norms"][ref], NORM_FLOOR)
            if not within(ours["norms"][k][our_name(ref)], norm, rtol):
                out.append(f"step {k} {ref} norm {ours['norms'][k][our_name(ref)]} vs {norm} (rtol {rtol:.3g})")
    if not within(ours["vals"][0], g["val_loss_before"], RTOL):
        out.append(f"val before {ours['vals'][0]} vs {g['val_loss_before']}")
    rtol = max(DRIFT_FACTOR * drift["val"], LOSS_FLOOR)
    if not within(ours["vals"][-1], g["val_loss_after"], rtol):
        out.append(f"val after {ours['vals'][-1]} vs {g['val_loss_after']} (rtol {rtol:.3g})")
    return out


def check_hparams(folder: str, ours: dict) -> list[str]:
    """Each reference group's static hyper-parameters and per-step lr against our group of the same parameters."""
    g = golden(folder)
    groups = param_groups(ours["model"])
    role = {groups.names[p]: r for r, ps in groups.items() for p in ps}
    ref_role = {}
    for entry in g["param_groups"]:
        roles = {role[our_name(name)] for name in entry["params"]}
        assert len(roles) == 1, (entry, roles)  # each reference group is one of our roles
        ref_role[f"{entry['optimizer']}.group{entry['group']}"] = roles.pop()
    ours_by_role = {group["role"]: group for group in ours["groups"]}
    out = []
    for key, value in g["hparams_static"].items():
        group, name = key.rsplit(".", 1)
        mine = STATIC[group.split("#")[0]].get(name)
        if mine is None:
            continue
        got = ours_by_role[ref_role[group]][mine]
        if (list(got) if isinstance(got, tuple) else got) != pytest.approx(value, rel=1e-12):
            out.append(f"{key} = {value}, ours {mine} = {got}")
    for k, step in enumerate(g["steps"]):
        for key, value in step["hparams"].items():
            group, name = key.rsplit(".", 1)
            if name == "lr" and ours["lrs"][k][ref_role[group]] != pytest.approx(value, rel=1e-12, abs=1e-15):
                out.append(f"step {k} {key} = {value}, ours {ours['lrs'][k][ref_role[group]]}")
    return out


@pytest.mark.parametrize("folder", sorted(RESULTS))
def test_the_recipe_s_steps_match_the_script_s(folder, tmp_path):
    ours = run(folder, tmp_path)
    assert check_hparams(folder, ours) == []
    assert check_trajectory(folder, ours) == []


def peer_is_ours(folder: str) -> str:
    """Why our arithmetic is not the golden's peer's here ("" where it is): the recording's CPU capability, one
    thread, and for bf16 Newton-Schulz results a CPU without native bf16 (where we emulate its GEMMs as the peer)."""
    meta = golden(folder)["meta"]
    if torch.backends.cpu.get_cpu_capability() != meta["cpu_capability"]:
        return f"the golden was recorded under {meta['cpu_capability']}, this CPU runs " \
               f"{torch.backends.cpu.get_cpu_capability()}"
    if meta["bf16_matmuls_per_run"] and native_bf16("cpu"):
        return "this CPU multiplies bf16 natively: the Newton-Schulz is not emulated here"
    return ""


@pytest.mark.parametrize("folder", sorted(RESULTS))
def test_the_norms_are_bitwise_the_peer_s_where_the_peer_is_ours(folder, tmp_path):
    """On the recording's kind of CPU every parameter's norm after every step equals the peer's (for AdamH, whose
    peers are 2 threads and no SIMD, the golden's own run), and every loss is within one rounding of the summed
    loss."""
    reason = peer_is_ours(folder)
    if reason:
        pytest.skip(reason)
    g = golden(folder)
    peer, val = ("steps_emulated_bf16", "val_loss_after_emulated_bf16") if g["meta"]["bf16_matmuls_per_run"] \
        else ("steps", "val_loss_after")
    ours = run(folder, tmp_path)
    tokens = g["meta"]["shape"]["rows"] * g["meta"]["shape"]["seq"]
    for k, want in enumerate(g[peer]):
        assert {r: ours["norms"][k][our_name(r)] for r in want["norms"]} == want["norms"], k
        assert within(ours["losses"][k], want["loss"] / tokens, LOSS_FLOOR), k
    assert within(ours["vals"][-1], g[val], LOSS_FLOOR)


def test_the_drift_tolerances_admit_the_reference_against_its_peer():
    """The tolerances hold the reference's own peer run: the test states a drift the reference itself shows."""
    for folder in RESULTS:
        g = golden(folder)
        for key in (k for k in g if k.startswith("steps_")):
            tokens = g["meta"]["shape"]["rows"] * g["meta"]["shape"]["seq"]
            peer = {"losses": [s["loss"] / tokens for s in g[key]],
                    "norms": [{our_name(r): v for r, v in s["norms"].items()} for s in g[key]],
                    "vals": [g["val_loss_before"], g["val_loss_after" + key[len("steps"):]]]}
            assert check_trajectory(folder, peer) == [], (folder, key)


def test_the_tiny_track3_shape_is_the_golden_s():
    meta = golden("20260430_muonh")["meta"]
    s = meta["shape"]
    cfg = model_preset("track3", n_layer=s["n_layer"], n_embd=s["dim"], n_head=s["dim"] // 128, vocab_size=s["vocab"])
    assert cfg.head_dim == 128 and meta["threads"] == 1 and meta["commit"].startswith("f411b3d")
