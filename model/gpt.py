"""The GPT: the NanoGPT-speedrun architecture, with every feature a GPTConfig switch, and vanilla GPT-2.

Speedrun features (after KellerJordan/modded-nanogpt): rotary embeddings, QK-norm, weightless RMSNorm,
ReLU² MLP, untied head, zero-initialised output projections, tanh logit softcap, value embeddings mixed
into V of the first and last layers, and U-net skips from the first half of the blocks into the second.

The three hot ops go through kernels.registry by the names in GPTConfig (attn_impl, mlp_impl, ce_impl),
so a Triton kernel or FlashAttention replaces the eager version without touching this file.
Parameter naming is a contract with optim/: every 2-D parameter under `blocks.` is a hidden matrix
(Muon/NorMuon); embeddings, the head and all gains/scalars go to Adam.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import registry
from model.config import GPTConfig


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype when autocast is on, else x's dtype.

    Registry ops receive their operands already cast, because a custom autograd.Function (the Triton
    kernels) is not autocast-aware.
    """
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


class Norm(nn.Module):
    """Weightless RMSNorm (speedrun) or LayerNorm with weight and bias (GPT-2)."""

    def __init__(self, dim: int, rms: bool):
        super().__init__()
        self.ln = None if rms else nn.LayerNorm(dim)
        self.dim = dim

    def forward(self, x):
        if self.ln is None:
            return F.rms_norm(x, (self.dim,))
        return self.ln(x)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(max_seq_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, D/2)
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, x):  # x: (B, T, H, D)
        T = x.size(1)
        cos, sin = self.cos[None, :T, None, :], self.sin[None, :T, None, :]  # (1, T, 1, D/2)
        x1, x2 = x.float().chunk(2, dim=-1)
        out = torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)
        return out.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, has_value_embed: bool):
        super().__init__()
        C = cfg.n_embd
        self.cfg = cfg
        self.c_q = nn.Linear(C, C, bias=False)
        self.c_k = nn.Linear(C, C, bias=False)
        self.c_v = nn.Linear(C, C, bias=False)
        self.c_proj = nn.Linear(C, C, bias=False)
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len) if cfg.rotary else None
        # v <- λ0·v + λ1·value_embedding (speedrun); only blocks that receive a value embedding have these.
        self.ve_lambdas = nn.Parameter(torch.tensor([0.5, 0.5])) if has_value_embed else None
        self.attend = registry.get("attention", cfg.attn_impl)

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
        dt = compute_dtype(x)
        y = self.attend(q.to(dt), k.to(dt), v.to(dt), causal=True, window=self.cfg.window, doc_ids=doc_ids)
        return self.c_proj(y.reshape(B, T, C))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)
        self.relu2 = registry.get("relu2_mlp", cfg.mlp_impl) if cfg.relu2 else None

    def forward(self, x):
        if self.relu2 is None:
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        dt = compute_dtype(x)
        x2d = x.reshape(-1, x.size(-1)).to(dt)  # (B*T, C)
        y = self.relu2(x2d, self.c_fc.weight.to(dt), self.c_proj.weight.to(dt))  # (B*T, C)
        return y.view_as(x)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, has_value_embed: bool):
        super().__init__()
        self.norm1 = Norm(cfg.n_embd, cfg.rmsnorm)
        self.attn = CausalSelfAttention(cfg, has_value_embed)
        self.norm2 = Norm(cfg.n_embd, cfg.rmsnorm)
        self.mlp = MLP(cfg)

    def forward(self, x, ve=None, doc_ids=None):
        x = x + self.attn(self.norm1(x), ve, doc_ids)
        return x + self.mlp(self.norm2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        L = cfg.n_layer
        # Value embeddings feed the first n_ve and the last n_ve blocks (the speedrun uses 3 of them).
        self.n_ve = min(3, L // 2) if cfg.value_embeds else 0
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = None if cfg.rotary else nn.Embedding(cfg.max_seq_len, cfg.n_embd)
        self.value_embeds = nn.ModuleList(nn.Embedding(cfg.vocab_size, cfg.n_embd) for _ in range(self.n_ve))
        self.blocks = nn.ModuleList(Block(cfg, self._value_embed_index(i) is not None) for i in range(L))
        # U-net: block i < L/2 feeds block L-1-i, weighted by a learned gain.
        self.skip_weights = nn.Parameter(torch.ones(L // 2)) if cfg.unet_skips else None
        self.norm_f = Norm(cfg.n_embd, cfg.rmsnorm)
        self.lm_head = None if cfg.tied_head else nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.cross_entropy = registry.get("linear_cross_entropy", cfg.ce_impl)
        self.reset_parameters()

    def _value_embed_index(self, layer: int):
        if layer < self.n_ve:
            return layer
        if layer >= self.cfg.n_layer - self.n_ve:
            return layer - (self.cfg.n_layer - self.n_ve)
        return None

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.cfg
        for name, p in self.named_parameters():
            if p.ndim < 2:
                continue  # LayerNorm weights/biases and gains keep their constructor values
            std = 0.02
            if name.endswith("c_proj.weight") and not cfg.zero_init_proj:
                std = 0.02 / math.sqrt(2 * cfg.n_layer)  # GPT-2's scaled init of residual projections
            nn.init.normal_(p, mean=0.0, std=std)
            if name.endswith("c_proj.weight") and cfg.zero_init_proj:
                p.zero_()
        if self.lm_head is not None and cfg.zero_init_proj:
            self.lm_head.weight.zero_()

    @property
    def head_weight(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final normalised hidden states (B, T, C) for token ids idx (B, T)."""
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.cfg.max_seq_len}")
        x = self.wte(idx)  # (B, T, C)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        doc_ids = torch.cumsum(idx == self.cfg.eot_token, dim=1) if self.cfg.doc_masking else None  # (B, T)
        ves = [ve(idx) for ve in self.value_embeds]
        if self.cfg.rmsnorm:
            x = F.rms_norm(x, (x.size(-1),))
        L, skips = self.cfg.n_layer, []
        for i, block in enumerate(self.blocks):
            if self.skip_weights is not None and i >= L - L // 2:
                x = x + self.skip_weights[i - (L - L // 2)] * skips.pop()
            j = self._value_embed_index(i)
            x = block(x, ves[j] if j is not None else None, doc_ids)
            if self.skip_weights is not None and i < L // 2:
                skips.append(x)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """With targets (B, T): the mean cross-entropy loss. Without: logits (B, T, V) in fp32."""
        x = self.hidden_states(idx)
        dt = compute_dtype(x)
        if targets is None:
            logits = F.linear(x.to(dt), self.head_weight.to(dt)).float()
            if self.cfg.logit_softcap is not None:
                logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
            return logits
        if targets.shape != idx.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != idx shape {tuple(idx.shape)}")
        C = x.size(-1)
        return self.cross_entropy(x.reshape(-1, C).to(dt), self.head_weight.to(dt), targets.reshape(-1),
                                  softcap=self.cfg.logit_softcap)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
