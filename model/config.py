"""GPTConfig: one dataclass for both the speedrun architecture and the vanilla GPT-2 baseline.

Every architectural feature of the speedrun is a switch, so a researcher can ablate it; every fused op
is an implementation name looked up in kernels.registry ("eager" runs anywhere, "triton" needs CUDA or
the interpreter), so kernels drop in without touching the model.
"""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 128
    n_layer: int = 12
    n_head: int = 6
    n_embd: int = 768  # head_dim = n_embd // n_head
    mlp_ratio: int = 4
    max_seq_len: int = 2048
    # speedrun architecture switches (all on) / vanilla GPT-2 (all off, see the "gpt2-vanilla" preset)
    rotary: bool = True  # rotary position embeddings; False = learned absolute positions
    qk_norm: bool = True  # RMS-normalise queries and keys before attention
    rmsnorm: bool = True  # weightless RMSNorm; False = LayerNorm with weight and bias
    relu2: bool = True  # ReLU² MLP; False = GELU
    tied_head: bool = False  # share the token embedding with the LM head
    zero_init_proj: bool = True  # zero-init attention/MLP output projections (and the head)
    logit_softcap: float | None = 15.0  # softcap·tanh(logits/softcap); None disables
    value_embeds: bool = True  # extra token embeddings mixed into V of the first and last layers
    unet_skips: bool = True  # U-net skips: the first half's outputs added into the second half (learned gains)
    window: int | None = None  # sliding-window attention (keys within `window` positions); None = full causal
    doc_masking: bool = False  # no attention across <|endoftext|> document boundaries
    eot_token: int = 50256
    # implementation names (kernels.registry)
    attn_impl: str = "eager"  # eager | sdpa | flex | fa2 | fa3 | auto
    mlp_impl: str = "eager"  # eager | triton
    ce_impl: str = "eager"  # eager | triton

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rotary embeddings need an even head_dim, got {self.n_embd // self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


_PRESETS = {
    # The speedrun model: 12 layers, 768 wide, 6 heads of 128, vocab 50304.
    "gpt2-124m": GPTConfig(),
    # The vanilla GPT-2 baseline for architectural comparisons (learned positions, GELU, LayerNorm, tied head).
    "gpt2-vanilla": GPTConfig(n_head=12, max_seq_len=1024, rotary=False, qk_norm=False, rmsnorm=False,
                              relu2=False, tied_head=True, zero_init_proj=False, logit_softcap=None,
                              value_embeds=False, unet_skips=False),
    # The CPU track: minutes on 2 cores. The vocab projection dominates the cost at this width.
    "cpu": GPTConfig(n_layer=4, n_head=4, n_embd=128, max_seq_len=256),
    # Unit tests: seconds.
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=32, max_seq_len=64),
}


def model_preset(name: str, **overrides) -> GPTConfig:
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose from {sorted(_PRESETS)}")
    return replace(_PRESETS[name], **overrides)
