"""SOAP-Muon: Muon whose momentum is preconditioned in a SOAP eigenbasis before Newton-Schulz, followed by a chain
of update shapers (radial brake, per-row update floor, radius pin, cautious weight decay); the 1-D parameters
take Adam without bias correction, β₂ per family. The optimizer of track 3's record (result #46, recipe
track3-record below).

Per hidden matrix W (m × n) with gradient G and k earlier updates:

    B ← lerp(B, G, 1 - μ);  U = lerp(G, B, μ)                Muon's Nesterov momentum (optim.muon); G kept
    SOAP (soap=True), once a basis exists (from the 2nd update on):
        P = Q_Lᵀ U Q_R;  E ← β₂·E + (1 - β₂)·P²               second moment of the projected momentum
        S = Q_L (P / max(E, ε²)^½) Q_Rᵀ · ‖U‖₄/‖S‖₄            ‖·‖₄: the Schatten-4 norm ‖X Xᵀ‖_F^½ (fp32)
      mlp matrices:        U ← S
      attention matrices:  U ← U + g·(S - U), rescaled to ‖U‖₄ (blend_norm)
                           g = 1 for q, k, v; for attn.c_proj (trust_gate) the agreement gate
                           g = clamp(a·r, floor(k), cap(k)),  a = clamp((cos(S, U) - min_agree)/(1 - min_agree), 0, 1),
                           r = clamp((cos(S, G) - min_align)/max(cos(U, G) - min_align, 1e-8), 0, 1)  (^trust_power)
                           floor 0.45 until trust_floor_end, fading linearly to 0 at trust_fade_end; cap 0.85 until
                           trust_fade_end, then 1
    O = NewtonSchulz(U) · sqrt(max(1, m/n))                  in ns_dtype, normalised by ‖U‖₄ (ns_norm)
    radial brake:   c = ⟨O, W⟩/‖W‖²;  O ← O - c·W + s·c·W,  s = radial_outward if c < 0 (the step grows ‖W‖),
                    radial_inward otherwise
    update floor:   row: O_i ← O_i · max(1, f·‖W_i‖/‖O_i‖) per output row i;  matrix: O ← O·max(1, f·‖W‖/‖O‖)
    radius target:  ρ = ‖W‖ - lr·⟨O, W⟩/‖W‖                  the first-order radius after the step (radius_pin)
    mask = [O ⊙ W > 0]                                      before the step (cautious_wd)
    W ← W - lr·O;  W ← W·ρ/‖W‖;  W ← W ⊙ (1 - lr·cautious_wd·mask)
    SOAP statistics from the raw gradient, after the update:
        L ← lerp(L, G Gᵀ, 1 - β₂);  R ← lerp(R, Gᵀ G, 1 - β₂)
        first update: Q_L, Q_R = eigenvectors of L, R (eigenvalues descending), E = 0
        later, every precondition_frequency updates: re-sort Q's columns (and E's rows/columns) by the Rayleigh
        quotients diag(Qᵀ L Q), descending (soap_resort), then one power step Q ← QR(L Q)

Each shaper is one option and switches off alone (the record's values in parentheses): soap (on), blend_norm (on),
trust_gate (on), ns_norm (schatten4; frobenius is Muon's), radial_outward (0.5; 1 = off), update_floor (row,
0.3825; none = off, matrix = the scalar floor the row floor replaced), radius_pin (on), cautious_wd (0.025;
0 = off); and on the 1-D side adam_1d_bias_correction (off) and aux_beta2_per_family (on). Norms, cosines, the
SOAP algebra and the shapers compute in fp32; the direction returns to Newton-Schulz's dtype after the brake and
after the floor (as the reference does: bf16 round trips in a bf16 run). Same-shape matrices share one batched
Newton-Schulz call; the rest is per matrix. Every matrix counts its own updates (k above): the trust-gate
schedule follows it, and a checkpoint carries it.

The embeddings and the head take torch's AdamW (as Muon's auxiliary side), the 1-D parameters Adam without bias
correction:  m ← lerp(m, g, 1 - β₁);  v ← lerp(v, g², 1 - β₂);  p ← p - lr·m/(√v + eps),  with β₂ per family:
gains (gain_beta2), attention output-projection biases (attn_proj_bias_beta2) and every other 1-D parameter,
the head's bias included (bias_beta2).
"""

import math
from dataclasses import dataclass, replace

import torch

from kernels import registry as kernels
from kernels.reference import NS_NORMS, schatten4_norm
from optim.muon import NS_DTYPES, TRACK3_NEWTON_SCHULZ, Muon, MuonConfig, adamw_update, lr_scale, momentum_directions
from optim.registry import Steps, optimizer, recipe, require
from optim.roles import RoleHparams, check_fraction, check_non_negative, role_table, torch_groups

UPDATE_FLOORS = ("row", "matrix", "none")
SOAP_EPS = 1e-8  # the SOAP denominator's floor is its square; the Schatten-4 norms' clamp
COS_EPS = 1e-8


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ / max(‖a‖‖b‖, 1e-8) in fp32 (a 0-D tensor)."""
    a, b = a.float(), b.float()
    return (a * b).sum() / (a.norm() * b.norm()).clamp_min(COS_EPS)


def eigenbasis(mat: torch.Tensor) -> torch.Tensor:
    """The eigenvectors of a symmetric matrix as columns, eigenvalues descending (float64 if fp32 fails)."""
    eye = torch.eye(mat.size(0), device=mat.device)
    try:
        _, q = torch.linalg.eigh(mat + 1e-30 * eye)
    except RuntimeError:
        _, q = torch.linalg.eigh(mat.double() + 1e-30 * eye)
        q = q.float()
    return torch.flip(q, [1])


def trust_floor(cfg: dict, k: int) -> float:
    """The trust gate's floor after k updates: floor until trust_floor_end, linear to 0 at trust_fade_end."""
    end, fade = cfg["trust_floor_end"], cfg["trust_fade_end"]
    if fade <= end:
        return 0.0 if k >= fade else cfg["trust_floor"]
    if k < end:
        return cfg["trust_floor"]
    if k >= fade:
        return 0.0
    return cfg["trust_floor"] * (fade - k) / (fade - end)


def trust_gate(raw: torch.Tensor, soap: torch.Tensor, grad: torch.Tensor, cfg: dict, k: int) -> torch.Tensor:
    """The agreement gate of the SOAP direction (a 0-D fp32 tensor in [floor(k), cap(k)])."""
    raw_grad, soap_grad, soap_raw = cosine(raw, grad), cosine(soap, grad), cosine(soap, raw)
    agree = ((soap_raw - cfg["trust_min_agree"]) / (1 - cfg["trust_min_agree"])).clamp(0, 1)
    align = cfg["trust_min_grad_align"]
    better = ((soap_grad - align) / (raw_grad - align).clamp_min(COS_EPS)).clamp(0, 1)
    gate = (agree * better).clamp(0, 1)
    if cfg["trust_power"] != 1.0:
        gate = gate.pow(cfg["trust_power"])
    cap = cfg["trust_cap"] if k < cfg["trust_fade_end"] else 1.0
    return gate.clamp(min=trust_floor(cfg, k), max=cap)


class SoapMuon(Muon):
    """SOAP-Muon on `hidden`, torch's AdamW on the embed/head `adam_groups`, Adam without bias correction on the
    groups marked bias_correction=False. `names`: each hidden matrix's name (attention matrices contain ".attn.",
    the gated one ".attn.c_proj."). `shaping`: the hidden group's SOAP and shaper settings (SoapMuonConfig)."""

    def __init__(self, hidden, adam_groups=(), *, names: dict, shaping: dict, gram_impl: str = "eager", **kwargs):
        super().__init__(hidden, adam_groups, **kwargs)
        self.gram = kernels.get("gram", gram_impl)  # G Gᵀ and Gᵀ G of the SOAP statistics
        self.kind = {}  # hidden matrix -> mlp | attn | attn_proj
        for p in hidden:
            name = names[p]
            self.kind[p] = "attn_proj" if ".attn.c_proj." in name else "attn" if ".attn." in name else "mlp"
        for group in self.param_groups:
            if group["use_muon"]:
                group.update(shaping)

    def compile_update(self, backend="inductor"):
        """SOAP-Muon's update runs eagerly (per-matrix eigenbases and shapers): nothing to compile."""

    # --- hidden matrices -------------------------------------------------------------------------------

    @torch.no_grad()
    def muon_update(self, group: dict, params=None):
        """The update of `params` (default: all) of the hidden group; matrices without a gradient are skipped."""
        by_shape = {}
        for p in group["params"] if params is None else params:
            if p.grad is not None:
                by_shape.setdefault(tuple(p.shape), []).append(p)
        mu = group["momentum"]
        for shape, same in by_shape.items():
            grads = [p.grad for p in same]
            buffers = []
            for p in same:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["steps"] = 0
                buffers.append(state["momentum_buffer"])
            updates = momentum_directions(grads, buffers, momentum=mu, lerp_weight=1 - mu, nesterov=group["nesterov"])
            updates = [self._precondition(p, u, g, group) for p, u, g in zip(same, updates, grads)]
            norm = {} if group["ns_norm"] == "frobenius" else {"norm": group["ns_norm"]}
            directions = self.orthogonalize(torch.stack(updates).to(NS_DTYPES[self.ns_dtype]), steps=group["ns_steps"],
                                            coefficients=group["ns_coefficients"], **norm)
            scale = lr_scale(shape, group["lr_scaling"])
            for p, direction, g in zip(same, directions.unbind(0), grads):
                self._apply(p, direction * scale, group)
                if group["soap"]:
                    self._soap_statistics(p, g, group)
                self.state[p]["steps"] += 1

    def _precondition(self, p, update: torch.Tensor, grad: torch.Tensor, group: dict) -> torch.Tensor:
        """The direction Newton-Schulz orthogonalizes: the momentum, SOAP-preconditioned and blended."""
        if not group["soap"]:
            return update
        soap = self._soap_direction(update, self.state[p], group)
        kind = self.kind[p]
        if kind == "mlp":
            return soap
        if kind == "attn_proj" and group["trust_gate"]:
            gate = trust_gate(update, soap, grad, group, self.state[p]["steps"])
        else:
            gate = torch.ones((), dtype=torch.float32, device=p.device)
        blended = update + (soap - update) * gate.to(update.dtype)
        if group["blend_norm"]:
            ratio = schatten4_norm(update, SOAP_EPS) / schatten4_norm(blended, SOAP_EPS)
            blended = (blended * ratio.to(blended.dtype)).to(update.dtype)
        return blended

    @staticmethod
    def _soap_direction(update: torch.Tensor, state: dict, group: dict) -> torch.Tensor:
        """The momentum preconditioned in the eigenbasis (advancing its second moment), at the momentum's
        Schatten-4 norm; the momentum itself while no basis exists."""
        if "basis_left" not in state:
            return update
        u = update.float()
        left, right = state["basis_left"], state["basis_right"]
        projected = left.T @ u @ right
        beta2 = group["soap_beta2"]
        state["soap_second_moment"].mul_(beta2).add_(projected.square(), alpha=1 - beta2)
        denom = state["soap_second_moment"].clamp_min(SOAP_EPS * SOAP_EPS).pow(0.5)
        soap = left @ (projected / denom) @ right.T
        soap.mul_(schatten4_norm(u, SOAP_EPS) / schatten4_norm(soap, SOAP_EPS))
        return soap.to(update.dtype)

    def _soap_statistics(self, p, grad: torch.Tensor, group: dict):
        """After the update: the Gram EMAs of the raw gradient, then the first basis (eigh) or its refresh."""
        state = self.state[p]
        g = grad.float()
        if "gram_left" not in state:
            state["gram_left"] = torch.zeros(p.size(0), p.size(0), dtype=torch.float32, device=p.device)
            state["gram_right"] = torch.zeros(p.size(1), p.size(1), dtype=torch.float32, device=p.device)
        weight = 1 - group["soap_beta2"]
        state["gram_left"].lerp_(self.gram(g, side="left"), weight)
        state["gram_right"].lerp_(self.gram(g, side="right"), weight)
        steps = state["steps"]
        if "basis_left" not in state:
            state["basis_left"] = eigenbasis(state["gram_left"])
            state["basis_right"] = eigenbasis(state["gram_right"])
            state["soap_second_moment"] = torch.zeros_like(p, dtype=torch.float32)
        elif steps > 0 and steps % group["precondition_frequency"] == 0:
            for side, dim in (("left", 0), ("right", 1)):
                basis, stats = state[f"basis_{side}"], state[f"gram_{side}"]
                if group["soap_resort"]:
                    order = torch.argsort(torch.diag(basis.T @ stats @ basis), descending=True)
                    basis = basis[:, order]
                    state["soap_second_moment"] = state["soap_second_moment"].index_select(dim, order)
                state[f"basis_{side}"], _ = torch.linalg.qr(stats @ basis)

    def _apply(self, p, direction: torch.Tensor, group: dict):
        """The shapers and the step of one matrix (direction: Newton-Schulz's output, shape-scaled)."""
        lr, dtype = group["lr"], direction.dtype
        if group["weight_decay"]:
            p.mul_(1 - lr * group["weight_decay"])
        outward, inward = group["radial_outward"], group["radial_inward"]
        if outward != 1.0 or inward != 1.0:
            d, w = direction.float(), p.float()
            c = (d * w).sum() / (w * w).sum().clamp_min(1e-12)
            radial = c * w
            factor = torch.where(c < 0, d.new_tensor(outward), d.new_tensor(inward))
            direction = ((d - radial) + factor * radial).to(dtype)
        floor = group["update_floor"]
        if floor == "row":
            rows = p.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
            lengths = direction.float().norm(dim=1, keepdim=True).clamp_min(1e-8)
            lift = torch.clamp(group["update_floor_ratio"] * rows / lengths, min=1.0)
            direction = (direction.float() * lift).to(dtype)
        elif floor == "matrix":
            w_norm = p.float().norm().clamp_min(1e-8)
            d_norm = direction.float().norm().clamp_min(1e-8)
            ratio = group["update_floor_ratio"]
            lift = torch.where(d_norm / w_norm < ratio, ratio * w_norm / d_norm, torch.ones_like(w_norm))
            direction = direction * lift.to(dtype)
        if group["radius_pin"]:
            before = p.float().norm().clamp_min(1e-8)
            target = (before + -lr * (direction.float() * p.float()).sum() / before).clamp_min(1e-8)
        cautious = group["cautious_wd"]
        if cautious:
            mask = (direction.float() * p.float() > 0).to(p.dtype)
        p.add_(direction, alpha=-lr)
        if group["radius_pin"]:
            p.mul_((target / p.float().norm().clamp_min(1e-8)).to(p.dtype))
        if cautious:
            p.mul_(1.0 - (lr * cautious) * mask)

    # --- 1-D parameters --------------------------------------------------------------------------------

    @torch.no_grad()
    def adam_update(self):
        """torch's AdamW on the embed/head groups (and on 1-D groups with bias correction), Adam without bias
        correction on the other 1-D groups."""
        for group in self.param_groups:
            if group["use_muon"]:
                continue
            if group.get("bias_correction", True):
                adamw_update(self, [group])
            else:
                self._adam_group(group)

    def _adam_group(self, group: dict):
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])  # decoupled, as AdamW's
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        means = [self.state[p]["exp_avg"] for p in params]
        squares = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_lerp_(means, grads, 1 - beta1)
        torch._foreach_lerp_(squares, [g.float().square() for g in grads], 1 - beta2)
        denoms = torch._foreach_add(torch._foreach_sqrt(squares), group["eps"])
        steps = torch._foreach_div([m.float() for m in means], denoms)
        torch._foreach_add_(params, [s.to(p.dtype) for s, p in zip(steps, params)], alpha=-group["lr"])


@dataclass(frozen=True)
class SoapMuonConfig(MuonConfig):
    """SOAP-Muon on the hidden matrices (SOAP-preconditioned momentum, Newton-Schulz, radial brake, update floor,
    radius pin, cautious weight decay); AdamW on the embeddings and head, Adam without bias correction on the 1-D
    parameters."""

    soap: bool = True
    """Precondition the momentum in the SOAP eigenbasis of the gradient's Gram EMAs before Newton-Schulz."""
    soap_beta2: float = 0.9
    """EMA coefficient of the Gram matrices and of the projected momentum's second moment."""
    precondition_frequency: int = 1
    """Refresh the eigenbasis (re-sort, one QR power step) every this many updates."""
    soap_resort: bool = True
    """Before each refresh, re-sort the basis (and the second moment) by the Rayleigh quotients, descending."""
    blend_norm: bool = True
    """Attention matrices: rescale the blend of the raw and SOAP directions to the raw one's Schatten-4 norm."""
    trust_gate: bool = True
    """attn.c_proj: blend the SOAP direction in by the agreement gate (else fully, as q, k, v)."""
    trust_min_agree: float = 0.2
    """The gate's agreement term is 0 at cos(SOAP, raw) <= this, 1 at 1."""
    trust_min_grad_align: float = 0.0
    """The gate's gradient term compares cos(SOAP, G) and cos(raw, G) above this value."""
    trust_power: float = 1.0
    """Exponent of the gate."""
    trust_floor: float = 0.45
    """Lower bound of the gate early in the run."""
    trust_cap: float = 0.85
    """Upper bound of the gate until trust_fade_end (1 after)."""
    trust_floor_end: Steps = 1375
    """Updates after which the gate's floor starts fading."""
    trust_fade_end: Steps = 1625
    """Updates after which the floor is 0 and the cap 1."""
    ns_norm: str = "schatten4"
    """How Newton-Schulz scales its input: schatten4 (‖U Uᵀ‖_F^½) | frobenius (Muon's)."""
    gram_impl: str = "auto"
    """kernels.registry implementation of gram (the SOAP statistics' G Gᵀ, Gᵀ G): eager | triton | auto (triton
    on CUDA, eager elsewhere)."""
    radial_outward: float = 0.5
    """Scale of the direction's radial component when the step grows ‖W‖ (1 = no brake)."""
    radial_inward: float = 1.0
    """Scale of the direction's radial component when the step shrinks ‖W‖."""
    update_floor: str = "row"
    """row: lift each output row's update to update_floor_ratio·‖W_row‖ | matrix: the same for the whole matrix |
    none."""
    update_floor_ratio: float = 0.3825
    """The floor's update/weight norm ratio."""
    radius_pin: bool = True
    """Rescale W after the step to its first-order radius ‖W‖ - lr·⟨O, W⟩/‖W‖ (removes the tangential growth)."""
    cautious_wd: float = 0.025
    """Decay after the step, only where the update already shrinks the weight: W ⊙ (1 - lr·wd·[O ⊙ W > 0])."""
    adam_1d_bias_correction: bool = False
    """The 1-D parameters' Adam with bias correction (torch's AdamW) instead of without."""
    aux_beta2_per_family: bool = True
    """1-D parameters: β₂ per family (gain_beta2, bias_beta2, attn_proj_bias_beta2); False: aux_betas' β₂."""
    gain_beta2: float = 0.99
    """Adam β₂ of the norm gains."""
    bias_beta2: float = 0.997
    """Adam β₂ of the biases (the head's too) and other 1-D parameters."""
    attn_proj_bias_beta2: float = 0.9965
    """Adam β₂ of the attention output projections' biases."""

    def __post_init__(self):
        super().__post_init__()
        check_fraction(self, "soap_beta2", "gain_beta2", "bias_beta2", "attn_proj_bias_beta2", "trust_floor")
        check_non_negative(self, "cautious_wd", "update_floor_ratio", "radial_outward", "radial_inward")
        require(self.precondition_frequency >= 1,
                f"--optim.precondition_frequency={self.precondition_frequency} must be >= 1")
        require(0 <= self.trust_min_agree < 1, f"--optim.trust_min_agree={self.trust_min_agree} must lie in [0, 1)")
        require(self.trust_floor <= self.trust_cap <= 1,
                f"--optim.trust_cap={self.trust_cap} must lie in [trust_floor={self.trust_floor}, 1]")
        require(self.trust_power > 0 and math.isfinite(self.trust_power),
                f"--optim.trust_power={self.trust_power} must be > 0")
        require(self.trust_floor_end >= 0 and self.trust_fade_end >= 0,
                f"--optim.trust_floor_end={self.trust_floor_end} and trust_fade_end={self.trust_fade_end} must be >= 0")
        require(self.update_floor in UPDATE_FLOORS,
                f"--optim.update_floor={self.update_floor!r}; choose from {', '.join(UPDATE_FLOORS)}")
        require(self.ns_norm in NS_NORMS, f"--optim.ns_norm={self.ns_norm!r}; choose from {', '.join(NS_NORMS)}")
        allowed = (*kernels.names("gram"), "auto")
        require(self.gram_impl in allowed, f"--optim.gram_impl={self.gram_impl!r}; choose from {', '.join(allowed)}")
        require(self.ns_norm == "frobenius" or self.newton_schulz_impl in ("eager", "auto"),
                f"--optim.ns_norm={self.ns_norm} is implemented by the eager Newton-Schulz only: use "
                "--optim.newton_schulz_impl=eager (or auto)")

    def resolve_auto(self, device, *, native_bf16: bool):
        """As Muon's, except that a Schatten-4 normalisation keeps the eager Newton-Schulz on every device."""
        cfg = self
        if self.ns_norm != "frobenius" and self.newton_schulz_impl == "auto":
            cfg = replace(self, newton_schulz_impl="eager")
        if self.gram_impl == "auto":
            cfg = replace(cfg, gram_impl="triton" if torch.device(device).type == "cuda" else "eager")
        return MuonConfig.resolve_auto(cfg, device, native_bf16=native_bf16)

    def implementations(self) -> dict:
        return {**super().implementations(), "gram": self.gram_impl}

    def shaping(self) -> dict:
        """The hidden group's settings beyond Muon's."""
        names = ("soap", "soap_beta2", "precondition_frequency", "soap_resort", "blend_norm", "trust_gate",
                 "trust_min_agree", "trust_min_grad_align", "trust_power", "trust_floor", "trust_cap",
                 "trust_floor_end", "trust_fade_end", "ns_norm", "radial_outward", "radial_inward", "update_floor",
                 "update_floor_ratio", "radius_pin", "cautious_wd")
        return {name: getattr(self, name) for name in names}


def scalar_family(name: str) -> str:
    """gain | attn_proj_bias | bias: the 1-D parameter families of the aux Adam."""
    if name.endswith(".gain"):
        return "gain"
    if name.endswith(".attn.c_proj.bias"):
        return "attn_proj_bias"
    return "bias"


@optimizer("soap_muon", SoapMuonConfig)
def build(cfg: SoapMuonConfig, groups):
    table = role_table(cfg, RoleHparams(cfg.lr, (0.0, 0.0), cfg.weight_decay), aux_lr=cfg.aux_lr,
                       aux_betas=cfg.aux_betas)
    adam_groups = torch_groups(groups, table, ("embed", "head"))
    scalar = table["scalar"]
    beta1, beta2 = scalar.betas
    family_beta2 = {"gain": cfg.gain_beta2, "bias": cfg.bias_beta2, "attn_proj_bias": cfg.attn_proj_bias_beta2}
    for family in ("gain", "bias", "attn_proj_bias"):
        params = [p for p in groups["scalar"] if scalar_family(groups.names[p]) == family]
        if params:
            adam_groups.append({"params": params, "role": "scalar", "family": family, "lr": scalar.lr,
                                "betas": (beta1, family_beta2[family] if cfg.aux_beta2_per_family else beta2),
                                "weight_decay": scalar.weight_decay, "bias_correction": cfg.adam_1d_bias_correction})
    device = groups["hidden"][0].device if groups["hidden"] else torch.device("cpu")
    impls = cfg.resolve_auto(device, native_bf16=False)  # the trainer resolves "auto" before; a direct build here
    return SoapMuon(groups["hidden"], adam_groups, names=groups.names, shaping=cfg.shaping(),
                    gram_impl=impls.gram_impl, lr=table["hidden"].lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                    weight_decay=table["hidden"].weight_decay, eps=cfg.aux_eps, ns_impl=impls.newton_schulz_impl,
                    ns_coefficients=cfg.ns_coefficients, ns_steps=cfg.ns_steps, ns_dtype=cfg.ns_dtype,
                    lr_scaling=cfg.lr_scaling)


# The record's PowerCool coefficients, stated for its 2900-step schedule: lr = min(lr0, c·(2900 - step)^1.2). The
# hidden matrices leave their initial lr at step 513.6, every other group at 1487.0 (lr0/c = 11305.6 and 6028.0).
RECORD_POWER_COOL = {"schedule": "power_cool", "schedule.power": 1.2, "schedule.end": 2900, "schedule.c_end": 2900,
                     "schedule.flat_until": 513.6, "schedule.aux_flat_until": 1487.0,
                     "schedule.c_hidden": 3.3169534699576625e-06, "schedule.c_embed": 4.976805410800738e-05,
                     "schedule.c_head": 5.184172302917436e-07, "schedule.c_scalar": 1.6589351369335795e-06}


@recipe("track3-record")
def track3_record() -> dict:
    """Track-3 result #46, the record: 2690 steps, mean val loss 3.2783 (n=8), read out by the Tail-EMA blend.
    Source: records/track_3_optimization/results/20260619_cwd_rowfloor_tailema/ (train_gpt_cwd_SOTA.py).

    SOAP-Muon on every hidden matrix (lr 0.0375; momentum 0.95 with Nesterov, 12 cubic Newton-Schulz steps in bf16
    on the Schatten-4-normalised direction; SOAP β₂ 0.9 refreshed every update with re-sorting; the attn.c_proj
    trust gate, floor 0.45 to update 1375 fading to 0 at 1625, cap 0.85; the norm-preserving blend), then the
    radial brake (outward component × 0.5), the per-row update floor 0.3825, the radius pin and cautious weight
    decay 0.025 after it. AdamW (betas (0.8, 0.99), eps 1e-10, no decay) on the embedding (lr 0.3) and the head
    weight (1/320); Adam without bias correction on the 1-D parameters (lr 0.01, β₁ 0.8, β₂ 0.99 for gains,
    0.9965 for attention output biases, 0.997 for the other biases). PowerCool to step 2900 (power 1.2, the
    script's own per-group coefficients); momentum 0.85 -> 0.95 over the first 300 steps and back to 0.85 over the
    last 200; the EMA-Nesterov look-ahead (0.3 × the embedding lr's ratio, displacement EMA 0.99) over steps 300 to
    1950. Init: PyTorch's construction init, zeroed output projections and head (weights and biases), mlp.c_fc
    scaled by depth (1 -> 0.7), norm gains split ±0.125 by signs (Rademacher before block 6, head-balanced opposite
    pairs from it). RMSNorms normalise in fp32 (norm_fp32, the script's form).
    Validation reads 0.4·w + 0.6·EMA(w), the EMA (horizon 150 steps, embeddings excluded) kept from step 2400;
    the raw weights' loss is logged beside it (they reach 3.28 at 2735). The schedule's horizon is 2900 steps and
    the run stops, and is scored, at 2690.
    """
    return {"optimizer": "soap_muon", "optim.lr": 0.0375, "optim.weight_decay": 0.0, **TRACK3_NEWTON_SCHULZ,
            "optim.ns_norm": "schatten4", "optim.soap": True, "optim.soap_beta2": 0.9,
            "optim.precondition_frequency": 1, "optim.soap_resort": True, "optim.blend_norm": True,
            "optim.trust_gate": True, "optim.trust_min_agree": 0.2, "optim.trust_min_grad_align": 0.0,
            "optim.trust_power": 1.0, "optim.trust_floor": 0.45, "optim.trust_cap": 0.85,
            "optim.trust_floor_end": 1375, "optim.trust_fade_end": 1625, "optim.radial_outward": 0.5,
            "optim.radial_inward": 1.0, "optim.update_floor": "row", "optim.update_floor_ratio": 0.3825,
            "optim.radius_pin": True, "optim.cautious_wd": 0.025,
            "optim.embed_lr": 0.3, "optim.head_lr": 1 / 320, "optim.scalar_lr": 0.01, "optim.aux_betas": (0.8, 0.99),
            "optim.aux_eps": 1e-10, "optim.aux_weight_decay": 0.0, "optim.adam_1d_bias_correction": False,
            "optim.aux_beta2_per_family": True, "optim.gain_beta2": 0.99, "optim.bias_beta2": 0.997,
            "optim.attn_proj_bias_beta2": 0.9965,
            "max_steps": 2690, "schedule_steps": 2900, "grad_clip": 0.0, **RECORD_POWER_COOL,
            "schedule.momentum.warmup_steps": 300, "schedule.momentum.start": 0.85,
            "schedule.momentum.cooldown_steps": 200, "schedule.momentum.end": 0.85,
            "wrapper": "ema_nesterov", "wrapper.lookahead": 0.3, "wrapper.scheduled": True,
            "wrapper.schedule_role": "embed", "wrapper.ema": 0.99, "wrapper.prefill_steps": 300,
            "wrapper.rest_steps": 1950,
            "readout": "tail_ema", "readout.start": 2400, "readout.end": 2900, "readout.tau": 150.0,
            "readout.blend": 0.6, "readout.embeddings": False,
            "model.init": "torch", "model.init_embed_bf16": True, "model.zero_init_proj": True,
            "model.zero_init_head": None, "model.zero_init_proj_bias": True, "model.init_fc_depth_scale": 0.3,
            "model.init_gain_split": 0.125, "model.init_gain_pairs_from": 6, "model.init_gain_head_balance": 0.5,
            "model.init_gain_seed": None, "model.norm_fp32": True}
