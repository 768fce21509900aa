"""The GPT: the NanoGPT-speedrun architecture, with every feature a GPTConfig switch, and vanilla GPT-2.

Speedrun features (after KellerJordan/modded-nanogpt): rotary embeddings, QK-norm, weightless RMSNorm,
ReLU² MLP, untied head, zero-initialised output projections, tanh logit softcap, value embeddings mixed
into V of the first and last layers, and U-net skips from the first half of the blocks into the second.

modded-nanogpt's optimization track (records/track_3_optimization/train_gpt_simple.py, the "track3" preset)
is the same family with biases on every Linear, RMSNorm gains, half-truncated RoPE, attention scale 0.12, an
algebraic softcap, its own init (GPT._init_track3) and a summed loss. It keeps the token embedding in bf16
and runs without autocast: the activations are bf16 from the embedding on, and every Linear and norm casts
its weight to the activation dtype (`type_as`), which under autocast (fp32 activations) changes nothing.

The three hot ops go through kernels.registry by the names in GPTConfig (attention_impl, relu2_mlp_impl,
linear_cross_entropy_impl: each op's registry name), so a Triton kernel or FlashAttention replaces the eager
version without touching this file. Every implementation takes the autocast dtype itself under torch.autocast
(the Triton ones are torch.library custom ops, whole in a torch.compile graph), so the model casts only what its
Linears cast: weights and biases to the activations' dtype.
Parameter naming is a contract with optim/: every 2-D parameter under `blocks.` is a hidden matrix
(Muon/NorMuon); embeddings, the head and all gains/scalars go to Adam.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import registry
from kernels.reference import softcap_logits
from model.config import GPTConfig


def _like(bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A Linear's optional bias in x's dtype (what Linear.forward passes to F.linear)."""
    return None if bias is None else bias.type_as(x)


def init_module(name: str) -> str | None:
    """The module kind an init_scale_* field names for parameter `name` (GPTConfig): qkv, attn_proj, mlp_fc,
    mlp_proj for the weights of the attention's q/k/v and output projection and the MLP's fc and output projection
    under blocks.; None for every other parameter."""
    if not (name.startswith("blocks.") and name.endswith(".weight")):
        return None
    for part, module in ((".attn.c_q.", "qkv"), (".attn.c_k.", "qkv"), (".attn.c_v.", "qkv"),
                         (".attn.c_proj.", "attn_proj"), (".mlp.c_fc.", "mlp_fc"), (".mlp.c_proj.", "mlp_proj")):
        if part in name:
            return module
    return None


class Linear(nn.Linear):
    """nn.Linear that casts its weight and bias to the input's dtype: bf16 activations use bf16 weights."""

    def forward(self, x):
        return F.linear(x, self.weight.type_as(x), None if self.bias is None else self.bias.type_as(x))


class Norm(nn.Module):
    """RMSNorm, weightless (speedrun) or with a learned gain (track 3), or LayerNorm with weight and bias (GPT-2)."""

    def __init__(self, dim: int, rms: bool, gain: bool = False, fp32: bool = False):
        super().__init__()
        self.ln = None if rms else nn.LayerNorm(dim)
        self.gain = nn.Parameter(torch.ones(dim)) if rms and gain else None
        self.dim = dim
        self.fp32 = fp32  # RMSNorm: normalise the fp32 upcast, times the gain, cast back (GPTConfig.norm_fp32)

    def forward(self, x):
        if self.ln is not None:
            return self.ln(x)
        if self.fp32:
            y = F.rms_norm(x.float(), (self.dim,))
            return (y if self.gain is None else y * self.gain).type_as(x)
        return F.rms_norm(x, (self.dim,), weight=None if self.gain is None else self.gain.type_as(x))


def rope_frequencies(head_dim: int, kind: str) -> torch.Tensor:
    """The head_dim/2 angular frequencies of rotary embeddings, fp32.

    standard: base 10000 ** (-2i/head_dim). half_truncated (modded-nanogpt): head_dim/4 frequencies from 1 down
    to 1/1024, then head_dim/4 zeros, so half of each head's dimensions carry no position.
    """
    if kind == "standard":
        return 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freq = (1 / 1024) ** torch.linspace(0, 1, steps=head_dim // 4, dtype=torch.float32)
    return torch.cat([freq, freq.new_zeros(head_dim // 4)])


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, kind: str = "standard"):
        super().__init__()
        inv_freq = rope_frequencies(head_dim, kind)  # (D/2,)
        t = torch.arange(max_seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, D/2)
        cos, sin = freqs.cos(), freqs.sin()
        # (x1, x2) -> (x1·cos + x2·sin, x2·cos - x1·sin) as x·[cos, cos] + [x2, x1]·[sin, -sin]: the same products
        # and sums (bit for bit), in three elementwise ops instead of six.
        self.register_buffer("cos", torch.cat((cos, cos), dim=-1), persistent=False)  # (T, D)
        self.register_buffer("sin", torch.cat((sin, -sin), dim=-1), persistent=False)

    def forward(self, x):  # x: (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]  # (1, T, 1, D)
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat((x2, x1), dim=-1) * sin).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, has_value_embed: bool):
        super().__init__()
        C = cfg.n_embd
        self.cfg = cfg
        self.c_q = Linear(C, C, bias=cfg.bias)
        self.c_k = Linear(C, C, bias=cfg.bias)
        self.c_v = Linear(C, C, bias=cfg.bias)
        self.c_proj = Linear(C, C, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope) if cfg.rotary else None
        # v <- λ0·v + λ1·value_embedding (speedrun); only blocks that receive a value embedding have these.
        self.ve_lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if has_value_embed else None
        self.attend = registry.get("attention", cfg.attention_impl)

    def forward(self, x, ve=None, doc_ids=None):
        B, T, C = x.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        q = self.c_q(x).view(B, T, H, D)  # (B, T, H, D)
        k = self.c_k(x).view(B, T, H, D)
        v = self.c_v(x).view(B, T, H, D)
        if ve is not None:
            v = self.ve_lambdas[0] * v + self.ve_lambdas[1] * ve.view(B, T, H, D)
        if self.cfg.qk_norm:
            q, k = F.rms_norm(q, (D,)), F.rms_norm(k, (D,))
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        # Under autocast q, k are fp32 here (RMSNorm, rotary) and v is bf16: every backend takes the autocast dtype
        # itself (eager computes in fp32 whatever it gets).
        y = self.attend(q, k, v, causal=True, window=self.cfg.window, doc_ids=doc_ids,
                        scale=self.cfg.attn_scale)  # (B, T, H, D)
        return self.c_proj(y.reshape(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=cfg.bias)
        self.c_proj = Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.relu2 = registry.get("relu2_mlp", cfg.relu2_mlp_impl) if cfg.relu2 else None

    def forward(self, x):
        if self.relu2 is None:
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        x2d = x.reshape(-1, x.size(-1))  # (B*T, C)
        # Weights and biases in the activations' dtype, as Linear casts them (bf16 activations of a bf16-embedding
        # model); under autocast the op casts everything to the autocast dtype itself, as F.linear does.
        fc, proj = self.c_fc, self.c_proj
        y = self.relu2(x2d, fc.weight.type_as(x2d), proj.weight.type_as(x2d), _like(fc.bias, x2d),
                       _like(proj.bias, x2d))  # (B*T, C)
        return y.view_as(x)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, has_value_embed: bool):
        super().__init__()
        self.norm1 = Norm(cfg.n_embd, cfg.rmsnorm, cfg.norm_gains, cfg.norm_fp32)
        self.attn = CausalSelfAttention(cfg, has_value_embed)
        self.norm2 = Norm(cfg.n_embd, cfg.rmsnorm, cfg.norm_gains, cfg.norm_fp32)
        self.mlp = MLP(cfg)

    def forward(self, x, ve=None, doc_ids=None):
        x = x + self.attn(self.norm1(x), ve, doc_ids)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig, dtype: torch.dtype = torch.float32):
        """`dtype` is the run's compute dtype: in a bf16 run a bf16_embedding model stores its token embedding
        in bf16 (so that the init draws bf16 numbers, as track 3 does); every other parameter is fp32."""
        super().__init__()
        self.cfg = cfg
        L = cfg.n_layer
        # Value embeddings feed the first n_ve and the last n_ve blocks (the speedrun uses 3 of them).
        self.n_ve = min(3, L // 2) if cfg.value_embeds else 0
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd, dtype=dtype if cfg.bf16_embedding else None)
        self.wpe = None if cfg.rotary else nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.norm_in = Norm(cfg.n_embd, rms=True, gain=cfg.norm_gains, fp32=cfg.norm_fp32) if cfg.rmsnorm else None
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.n_embd) for _ in range(self.n_ve))
        self.blocks = nn.ModuleList(Block(cfg, self._value_embed_index(i) is not None) for i in range(L))
        # U-net: block i < L/2 feeds block L-1-i, weighted by a learned gain.
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if cfg.unet_skips else None
        self.norm_f = Norm(cfg.n_embd, cfg.rmsnorm, cfg.norm_gains, cfg.norm_fp32)
        self.lm_head = None if cfg.tied_head else Linear(cfg.n_embd, cfg.vocab_size, bias=cfg.bias)
        self.cross_entropy = registry.get("linear_cross_entropy", cfg.linear_cross_entropy_impl)
        self.reset_parameters()

    def _value_embed_index(self, layer: int):
        if layer < self.n_ve:
            return layer
        if layer >= self.cfg.n_layer - self.n_ve:
            return layer - (self.cfg.n_layer - self.n_ve)
        return None

    @torch.no_grad()
    def reset_parameters(self):
        """Initialise every parameter in three phases: init_rule() (cfg.init), redraw_hidden() (when
        cfg.init_redraw_hidden), init_edits() (init_scale_*, zero_init_*). Seed the generator first for a
        reproducible init: each rule draws in its reference's order, so the same seed gives the reference's
        numbers. (A reference that seeds again between its construction and its re-draw is reproduced by calling
        the phases one by one.)"""
        self.init_rule()
        if self.cfg.init_redraw_hidden:
            self.redraw_hidden()
        self.init_edits()

    @torch.no_grad()
    def init_rule(self):
        """Draw every parameter by cfg.init's rule (normal, track3 or torch)."""
        {"normal": self._init_normal, "track3": self._init_track3, "torch": self._init_torch}[self.cfg.init]()

    def _init_normal(self):
        """GPT-2's rule: N(0, 0.02) matrices (output projections N(0, 0.02/sqrt(2·n_layer)) when not zeroed), zero
        Linear biases; LayerNorms and gains keep their constructor values."""
        cfg = self.cfg
        for name, p in self.named_parameters():
            if p.ndim < 2:
                if name.endswith("bias") and not name.endswith("ln.bias"):
                    p.zero_()  # Linear biases start at 0 (GPT-2); LayerNorm and gains keep their constructor values
                continue
            std = 0.02
            if name.endswith("c_proj.weight") and not cfg.zero_init_proj:
                std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2's scaled init of residual projections
            nn.init.normal_(p, mean=0.0, std=std)
            if name.endswith("c_proj.weight") and cfg.zero_init_proj:
                p.zero_()
        if self.lm_head is not None and cfg.zero_head:
            self.lm_head.weight.zero_()

    def _init_torch(self):
        """PyTorch's construction init, re-run in module order (the order the constructor drew it): every Linear's
        own reset_parameters (kaiming_uniform_(a=sqrt(5)) weight, then U(±1/sqrt(fan_in)) bias), the embeddings
        N(0, 1) drawn in fp32 (the token embedding rounded to bf16 when init_embed_bf16), LayerNorms reset, RMSNorm
        gains 1. Other parameters (U-net skip weights, value-embedding mixes) keep their values."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                w = torch.empty(module.weight.shape, dtype=torch.float32, device=module.weight.device).normal_()
                if module is self.wte and self.cfg.init_embed_bf16:
                    w = w.bfloat16()
                module.weight.copy_(w)
            elif isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()
            elif isinstance(module, Norm) and module.gain is not None:
                module.gain.fill_(1.0)

    @torch.no_grad()
    def redraw_hidden(self):
        """Every hidden matrix, in parameter order, re-drawn from N(0, s/sqrt(3·fan_in)) (s: its init_scale_*)."""
        for name, p in self.named_parameters():
            if name.startswith("blocks.") and p.ndim == 2:
                p.normal_(0, 1.0 / (3.0 * p.size(1)) ** 0.5 * self.init_scale(name))

    def init_scale(self, name: str) -> float:
        """The init_scale_* multiplier of parameter `name` (1 for a parameter no such field names)."""
        module = init_module(name)
        return 1.0 if module is None else getattr(self.cfg, f"init_scale_{module}")

    @torch.no_grad()
    def init_edits(self):
        """The init edits on whatever the rule drew, in parameter order: init_scale_* multiplies the scaled modules'
        weights (unless init_redraw_hidden took it into their std), zero_init_* zeroes; then init_fc_depth_scale and
        init_gain_split (track 3's record: zeroed projections and head, depth-scaled fc, split gains)."""
        cfg = self.cfg
        for name, p in self.named_parameters():
            projection = name.endswith("c_proj.weight") or name.endswith("c_proj.bias")
            head = name.startswith("lm_head.")
            if ((name.endswith("c_proj.weight") and cfg.zero_init_proj) or (name == "lm_head.weight" and cfg.zero_head)
                    or (name.endswith("bias") and (projection or head) and cfg.zero_init_proj_bias)):
                p.zero_()
            elif not (cfg.init_redraw_hidden and name.startswith("blocks.") and p.ndim == 2):
                scale = self.init_scale(name)
                if scale != 1.0:
                    p.mul_(scale)
        self._init_depth_and_gains()

    def _track3_order(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) in the order of track 3's GPT.named_parameters(): the embedding; per block the
        attention q, k, v, proj and the MLP fc, proj (weight, then bias), then the block's two norm gains; the
        head; the input norm's and the final norm's gains. Raises if a parameter has no place in that order."""
        named = dict(self.named_parameters())
        names = ["wte.weight"]
        for i in range(self.cfg.n_layer):
            for layer in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                names += [f"blocks.{i}.{layer}.weight", f"blocks.{i}.{layer}.bias"]
            names += [f"blocks.{i}.norm1.gain", f"blocks.{i}.norm2.gain"]
        names += ["lm_head.weight", "lm_head.bias", "norm_in.gain", "norm_f.gain"]
        extra = sorted(set(named) - set(names))
        if extra:
            raise ValueError(f"init='track3' has no rule for {', '.join(extra)}: it initialises the track-3 model "
                             "family (no value embeddings, U-net skips, learned positions, LayerNorms or tied head)")
        return [(name, named[name]) for name in names if name in named]

    def _init_track3(self):
        """Track 3's rule, in its parameter order (so a seeded init draws exactly its numbers): the embedding
        N(0, 1) in its own dtype; output projections (zero_init_proj) and the head (zero_head) zero, without a draw;
        other weights N(0, 0.33 / fan_in); biases zero; gains one."""
        cfg = self.cfg
        for name, p in self._track3_order():
            if name == "wte.weight":
                p.normal_()
            elif ((name.endswith("c_proj.weight") and cfg.zero_init_proj)
                  or (name == "lm_head.weight" and cfg.zero_head)):
                p.zero_()
            elif name.endswith("weight"):
                p.normal_(std=0.33**0.5 / p.size(-1) ** 0.5)
            elif name.endswith("bias"):
                p.zero_()
            else:  # a gain: N(1, 0) is exactly 1, and draws from the generator as the reference's init does
                p.normal_(mean=1.0, std=0.0)

    def _init_depth_and_gains(self):
        """The last init edits, in this order: mlp.c_fc weights scaled by depth (init_fc_depth_scale), then the norm
        gains split by signs (init_gain_split); only the latter draws random numbers."""
        cfg, L = self.cfg, self.cfg.n_layer
        if cfg.init_fc_depth_scale:
            for layer, block in enumerate(self.blocks):
                block.mlp.c_fc.weight.mul_(1.0 - cfg.init_fc_depth_scale * (layer / (L - 1) if L > 1 else 0.0))
        if cfg.init_gain_split:
            seed = torch.initial_seed() if cfg.init_gain_seed is None else cfg.init_gain_seed
            first, paired = cfg.init_gain_pairs_from, None
            for layer, block in enumerate(self.blocks):
                gain = block.norm1.gain
                if layer >= first and (layer - first) % 2 == 1:
                    signs, paired = paired, None
                elif layer >= first:
                    signs, paired = self._head_balanced_pair(layer, seed, gain.numel(), gain.device)
                else:
                    signs = torch.randint(0, 2, gain.shape, device=gain.device, dtype=torch.float32) * 2 - 1
                block.norm1.gain.copy_(1.0 - cfg.init_gain_split * signs)
                block.norm2.gain.copy_(1.0 + cfg.init_gain_split * signs)

    def _head_balanced_pair(self, layer: int, seed: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two opposite ±1 vectors of `width` for block `layer` and the next one, from a generator seeded
        0xA9170000 + seed·1009 + layer·9176: per head, the + count of a Rademacher draw pulled toward head_dim/2 by
        init_gain_head_balance (rounded half to even), those signs shuffled for the first block, the opposite
        counts shuffled for the second."""
        head_dim, balance = self.cfg.head_dim, self.cfg.init_gain_head_balance
        gen = torch.Generator(device=device)
        gen.manual_seed((0xA9170000 + seed * 1009 + layer * 9176) % 2**64)
        first, second = [], []
        for _ in range(width // head_dim):
            draw = torch.randint(0, 2, (head_dim,), device=device, generator=gen, dtype=torch.int64) * 2 - 1
            plus = int((draw > 0).sum().item())
            plus = max(0, min(head_dim, int(round(head_dim / 2 + balance * (plus - head_dim / 2)))))
            for out, count in ((first, plus), (second, head_dim - plus)):
                signs = torch.cat([torch.ones(count, device=device), -torch.ones(head_dim - count, device=device)])
                out.append(signs[torch.randperm(head_dim, device=device, generator=gen)])
        return torch.cat(first), torch.cat(second)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C) for token ids idx (B, T)."""
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        x = self.wte(idx)  # (B, T, C), bf16 from a bf16 embedding
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        doc_ids = torch.cumsum(idx == self.cfg.eot_token, dim=1) if self.cfg.doc_masking else None  # (B, T)
        ves = [ve(idx) for ve in self.value_embeds]
        if self.norm_in is not None:
            x = self.norm_in(x)
        L, skips = self.cfg.n_layer, []
        for i, block in enumerate(self.blocks):
            if self.skip_weights is not None and i >= L - L // 2:
                x = x + self.skip_weights[i - (L - L // 2)] * skips.pop()
            j = self._value_embed_index(i)
            x = block(x, ves[j] if j is not None else None, doc_ids)
            if self.skip_weights is not None and i < L // 2:
                skips.append(x)
        return self.norm_f(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Softcapped logits (B, T, V) in fp32 from final hidden states x (B, T, C)."""
        z = self.lm_head(x) if self.lm_head is not None else F.linear(x, self.wte.weight.type_as(x))
        return softcap_logits(z.float(), self.cfg.logit_softcap, self.cfg.softcap_kind)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """With targets (B, T): the cross-entropy loss, mean or sum over the tokens (cfg.loss_reduction).
        Without: logits (B, T, V) in fp32."""
        x = self.hidden_states(idx)
        if targets is None:
            return self.logits(x)
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
        C = x.size(-1)
        head_bias = None if self.lm_head is None else _like(self.lm_head.bias, x)
        return self.cross_entropy(x.reshape(-1, C), self.head_weight.type_as(x), targets.reshape(-1), bias=head_bias,
                                  softcap=self.cfg.logit_softcap, softcap_kind=self.cfg.softcap_kind,
                                  reduction=self.cfg.loss_reduction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
