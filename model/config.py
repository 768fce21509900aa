"""GPTConfig: one dataclass for both the speedrun architecture and the vanilla GPT-2 baseline.

Every architectural feature of the speedrun is a switch, so a researcher can ablate it; every fused op
is an implementation name looked up in kernels.registry ("eager" runs anywhere, "triton" needs CUDA or
the interpreter), so kernels drop in without touching the model.
"""

import math
from dataclasses import dataclass, replace

from speedrun.cli import ConfigError

CHOICES = {"softcap_kind": ("tanh", "algebraic"), "rope": ("standard", "half_truncated"),
           "init": ("normal", "track3", "torch"), "loss_reduction": ("mean", "sum")}
# The modules an init_scale_* field multiplies (model/gpt.py: GPT.init_scale)
INIT_SCALED = ("qkv", "attn_proj", "mlp_fc", "mlp_proj")


@dataclass(frozen=True)
class GPTConfig:
    """The model: the speedrun architecture's switches, track 3's differences and the kernels' implementations."""

    vocab_size: int = 50304
    """Vocabulary size: GPT-2's 50257 padded up to a multiple of 128."""
    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 6
    """Attention heads per block (head_dim = n_embd // n_head)."""
    n_embd: int = 768
    """Model width (head_dim = n_embd // n_head)."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of n_embd."""
    max_seq_len: int = 2048
    """Longest sequence the model takes (rotary tables and position embeddings are built for it)."""
    # speedrun architecture switches (all on) / vanilla GPT-2 (all off, see the "gpt2-vanilla" preset)
    rotary: bool = True
    """Rotary position embeddings; False = learned absolute positions."""
    qk_norm: bool = True
    """RMS-normalise queries and keys before attention."""
    rmsnorm: bool = True
    """Weightless RMSNorm; False = LayerNorm with weight and bias."""
    relu2: bool = True
    """ReLU² MLP; False = GELU."""
    tied_head: bool = False
    """Share the token embedding with the LM head."""
    zero_init_proj: bool = True
    """Zero-init the attention and MLP output projection weights (and the head weight, unless zero_init_head
    says otherwise)."""
    logit_softcap: float | None = 15.0
    """Bound on the logits (see softcap_kind); None disables."""
    softcap_kind: str = "tanh"
    """tanh: c·tanh(z/c) | algebraic: c·z/sqrt(z² + c²) (track 3)."""
    value_embeds: bool = True
    """Extra token embeddings mixed into V of the first and last layers."""
    unet_skips: bool = True
    """U-net skips: the first half's outputs added into the second half (learned gains)."""
    window: int | None = None
    """Sliding-window attention (keys within `window` positions); None = full causal."""
    doc_masking: bool = False
    """No attention across <|endoftext|> document boundaries."""
    eot_token: int = 50256
    """The <|endoftext|> id document masking splits on."""
    # modded-nanogpt's optimization track ("track 3", the "track3" preset) differs from the speedrun model in:
    bias: bool = False
    """A bias on every Linear: attention q, k, v, proj, MLP fc, proj and the head."""
    norm_gains: bool = False
    """RMSNorms with a learned gain vector (each block's two, the input and final norms)."""
    norm_fp32: bool = False
    """Those RMSNorms computed on the fp32 upcast of their input, times the gain, cast back to the input's dtype
    (some track-3 results' form): the same numbers in fp32; with bf16 activations the normalisation is fp32."""
    rope: str = "standard"
    """standard: base 10000 over head_dim/2 frequencies | half_truncated: see model/gpt.py."""
    attn_scale: float | None = None
    """Attention logits scale; None = 1/sqrt(head_dim) (track 3: 0.12)."""
    bf16_embedding: bool = False
    """In a bf16 run: a bf16 token embedding, bf16 activations, no autocast."""
    init: str = "normal"
    """The init rule (then the init_* and zero_init_* edits below, in that order; seed the generator first):
    normal: N(0, 0.02) matrices, zero biases (GPT-2) | track3: modded-nanogpt's baseline rule, drawn in its
    parameter order: N(0, 0.33/fan_in) weights, N(0, 1) embedding, zero biases, gains 1 | torch: PyTorch's
    construction init, drawn in module construction order: each Linear's kaiming-uniform weight and uniform bias,
    both U(±1/sqrt(fan_in)), N(0, 1) embeddings, gains 1."""
    init_embed_bf16: bool = True
    """init="torch": the token embedding's N(0, 1) draw rounded to bf16, as modded-nanogpt leaves it (it builds
    the embedding in fp32 and converts it), whatever the run's dtype; False keeps the fp32 draw (as re-running
    the default init on an fp32 embedding gives)."""
    init_redraw_hidden: bool = False
    """After the init rule, re-draw every hidden matrix (the 2-D weights under blocks.), in parameter order, from
    N(0, s/sqrt(3·fan_in)): the std of PyTorch's uniform Linear init, times its module's init_scale_* s."""
    init_scale_qkv: float = 1.0
    """Multiplier of the attention q, k, v weights' init (of their std where init_redraw_hidden re-draws them)."""
    init_scale_attn_proj: float = 1.0
    """Multiplier of the attention output projection weights' init (of the std where re-drawn)."""
    init_scale_mlp_fc: float = 1.0
    """Multiplier of the MLP input (fc) weights' init (of the std where re-drawn)."""
    init_scale_mlp_proj: float = 1.0
    """Multiplier of the MLP output projection weights' init (of the std where re-drawn)."""
    zero_init_head: bool | None = None
    """Zero-init the LM head weight; None = as zero_init_proj."""
    zero_init_proj_bias: bool = False
    """Zero-init the biases of the attention and MLP output projections and of the head (the rules that draw
    biases: torch; the others start every bias at 0)."""
    init_fc_depth_scale: float = 0.0
    """Init edit (after the zeroing and the scales): block l's mlp.c_fc weight × (1 - init_fc_depth_scale·l/(n_layer
    - 1)) (0 = off; track 3's record: 0.3)."""
    init_gain_split: float = 0.0
    """Init edit, last: each block's norm gains split by ±1 signs s, norm1 = 1 - a·s and norm2 = 1 + a·s with
    a = init_gain_split (needs norm_gains; 0 = off; track 3's record: 0.125)."""
    init_gain_pairs_from: int = 6
    """With init_gain_split: blocks before this one draw s from the global generator (Rademacher); from it on,
    blocks come in pairs whose signs are head-balanced and opposite, from a private seeded generator."""
    init_gain_head_balance: float = 0.5
    """With init_gain_split, paired blocks: per head of the first block of a pair, the count of + signs is pulled
    toward head_dim/2 by this factor (0: exactly balanced, 1: as drawn); the second block takes the opposite
    counts."""
    init_gain_seed: int | None = None
    """Seed of the paired blocks' private generator (per block l: 0xA9170000 + seed·1009 + l·9176); None = the
    seed the global generator was last seeded with (the run's --seed)."""
    loss_reduction: str = "mean"
    """mean | sum (over the batch's tokens; track 3 backpropagates the sum)."""
    # implementation names (kernels.registry)
    attention_impl: str = "eager"
    """kernels.registry implementation of attention: eager | sdpa | flex | fa2 | fa3 | fa4 | auto."""
    relu2_mlp_impl: str = "eager"
    """kernels.registry implementation of relu2_mlp: eager | triton | auto (triton on CUDA)."""
    linear_cross_entropy_impl: str = "eager"
    """kernels.registry implementation of linear_cross_entropy: eager | chunked (the CPU's) | triton | auto
    (triton on CUDA, chunked on the CPU)."""

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_head", "n_embd", "mlp_ratio", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--model.{name}={getattr(self, name)} must be >= 1")
        for name in ("window", "logit_softcap", "attn_scale"):  # None switches each off; 0 would give NaN or inf
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"--model.{name}={value} must be > 0, or None to switch it off")
        if self.doc_masking and not 0 <= self.eot_token < self.vocab_size:
            raise ConfigError(f"--model.eot_token={self.eot_token} is outside the vocabulary [0, {self.vocab_size})")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        for name in (f"init_scale_{module}" for module in INIT_SCALED):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"--model.{name}={value} must be a finite number >= 0")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}; choose from {', '.join(allowed)}")
        if not 0 <= self.init_fc_depth_scale <= 1:
            raise ConfigError(f"--model.init_fc_depth_scale={self.init_fc_depth_scale} must lie in [0, 1]")
        if not 0 <= self.init_gain_split < 1:
            raise ConfigError(f"--model.init_gain_split={self.init_gain_split} must lie in [0, 1)")
        if self.init_gain_split and not (self.rmsnorm and self.norm_gains):
            raise ConfigError("--model.init_gain_split needs norm gains (--model.norm_gains=True, rmsnorm=True)")
        if not 0 <= self.init_gain_head_balance <= 1:
            raise ConfigError(f"--model.init_gain_head_balance={self.init_gain_head_balance} must lie in [0, 1]")
        if self.init_gain_pairs_from < 0:
            raise ConfigError(f"--model.init_gain_pairs_from={self.init_gain_pairs_from} must be >= 0")
        if self.rotary and self.head_dim % (4 if self.rope == "half_truncated" else 2):
            raise ConfigError(f"{self.rope} rotary embeddings need a head_dim divisible by "
                             f"{4 if self.rope == 'half_truncated' else 2}, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def zero_head(self) -> bool:
        """Whether the init zeroes the LM head weight (zero_init_head, or zero_init_proj when that is None)."""
        return self.zero_init_proj if self.zero_init_head is None else self.zero_init_head


# modded-nanogpt's optimization track (records/track_3_optimization/train_gpt_simple.py): 12 layers, 768 wide,
# 6 heads of 128, biases, RMSNorm gains, half-truncated RoPE, attention scale 0.12, algebraic softcap 15, a bf16
# embedding (bf16 activations, no autocast), its own init, and the summed loss.
_TRACK3 = GPTConfig(max_seq_len=1024, value_embeds=False, unet_skips=False, bias=True, norm_gains=True,
                    rope="half_truncated", attn_scale=0.12, softcap_kind="algebraic", bf16_embedding=True,
                    init="track3", loss_reduction="sum", attention_impl="sdpa")

_PRESETS = {
    # The speedrun model: 12 layers, 768 wide, 6 heads of 128, vocab 50304.
    "gpt2-124m": GPTConfig(),
    # The vanilla GPT-2 baseline for architectural comparisons (learned positions, GELU, LayerNorm, tied head).
    "gpt2-vanilla": GPTConfig(n_head=12, max_seq_len=1024, rotary=False, qk_norm=False, rmsnorm=False,
                              relu2=False, tied_head=True, zero_init_proj=False, logit_softcap=None,
                              value_embeds=False, unet_skips=False),
    # The CPU track: minutes on 2 cores. The vocab projection dominates the cost at this width.
    "cpu": GPTConfig(n_layer=4, n_head=4, n_embd=128, max_seq_len=256),
    # modded-nanogpt's optimization track (see _TRACK3).
    "track3": _TRACK3,
    # Track 3 scaled to 2 CPU cores: the same family, 4 layers of one 128-wide head (the vocab projection and
    # the elementwise passes over its logits dominate the cost).
    "track3-cpu": replace(_TRACK3, n_layer=4, n_head=1, n_embd=128, max_seq_len=256),
    # Unit tests: seconds.
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=64),
}


def model_preset(name: str, **overrides) -> GPTConfig:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose from {sorted(_PRESETS)}")
    return replace(_PRESETS[name], **overrides)
