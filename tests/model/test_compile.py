"""torch.compile(model, fullgraph=True) with every Triton implementation selected, for the gpt2-124m (speedrun) and
track3 architectures at a tiny size: no graph break (fp32, and bf16 as the trainer runs each: autocast, or track
3's bf16 activations from its bf16 embedding), and the same loss and gradients as the eager model.

The Triton kernels are torch.library custom ops (torch.ops.speedrun.*), opaque to Dynamo: on the CPU they run
under the Triton interpreter inside the compiled graph (inductor calls them as extern kernels). Models are tiny
(2 layers, width 32, vocab 97) so the interpreter is quick; each compile (inductor, forward + backward) takes
~20 s on the CPU, so every model is compiled once per module (the `compiled` fixture).
"""

import pytest
import torch

from model.config import model_preset
from model.gpt import GPT

VOCAB = 97
TRITON_IMPLS = dict(relu2_mlp_impl="triton", linear_cross_entropy_impl="triton",
                    attention_impl="sdpa")  # sdpa: the CPU's attention backend

TINY = dict(n_layer=2, n_head=2, n_embd=32, max_seq_len=64, vocab_size=VOCAB)
# The architectures the trainer builds, at a tiny size, with every Triton implementation: the speedrun model, and
# track 3's (biases on both MLP matmuls and the head, algebraic softcap, summed loss, a bf16 embedding in bf16).
MODELS = {
    "gpt2-124m": model_preset("gpt2-124m", **TINY, **TRITON_IMPLS),
    "track3": model_preset("track3", **TINY, **TRITON_IMPLS),
}


def _model(cfg, seed=3, dtype=torch.float32):
    """The model as the trainer builds it for `dtype` (bf16: a bf16 embedding for a bf16_embedding model)."""
    torch.manual_seed(seed)
    model = GPT(cfg, dtype=dtype)
    with torch.no_grad():  # zero-initialised projections and head would leave most gradients zero
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _batch(seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (2, 19), generator=g), torch.randint(0, VOCAB, (2, 19), generator=g)


def _loss_and_grads(model, fn, idx, targets):
    model.zero_grad(set_to_none=True)
    loss = fn(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def compiled():
    """name -> (eager (loss, grads), compiled (loss, grads)), each model compiled once (inductor, fullgraph)."""
    cache = {}

    def get(name):
        if name not in cache:
            torch._dynamo.reset()
            model = _model(MODELS[name])
            idx, targets = _batch()
            eager = _loss_and_grads(model, model, idx, targets)
            step = torch.compile(model, fullgraph=True)
            cache[name] = eager, _loss_and_grads(model, step, idx, targets)
        return cache[name]

    return get


def _bf16(cfg):
    """(model dtype, autocast?) of a bf16 run, as train.py does it: autocast over fp32 parameters, or a
    bf16_embedding model's bf16 activations without autocast."""
    return torch.bfloat16, not cfg.bf16_embedding


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_graph_breaks(name, precision):
    """Dynamo traces the whole forward into one graph (torch._dynamo.explain), in fp32 and in the model's bf16
    mode (the ops cast at their entry points under autocast; track 3's Linears cast weights to bf16)."""
    cfg = MODELS[name]
    dtype, autocast = _bf16(cfg) if precision == "bf16" else (torch.float32, False)
    model = _model(cfg, dtype=dtype)
    idx, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        explained = torch._dynamo.explain(model)(idx, targets)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_matches_eager(name, compiled):
    """Inductor's forward + backward (fp32) against the eager model on the same weights and batch: the same loss
    and every parameter's gradient, up to the fp32 reassociation of inductor's fused elementwise code."""
    (loss, grads), (compiled_loss, compiled_grads) = compiled(name)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == compiled_grads.keys()
    for n, g in grads.items():
        assert g.abs().max() > 0, f"{n}: zero gradient, the comparison would be void"
        torch.testing.assert_close(compiled_grads[n], g, rtol=1e-3, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_kernel_is_in_the_compiled_graphs(name):
    """The compiled step calls the custom ops (not eager fallbacks): AOTAutograd's forward graph holds the MLP and
    loss ops, its backward graph the MLP's backward op (the loss's backward is a multiplication of the saved
    gradients)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs = {"forward": [], "backward": []}

    def capture(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append({str(node.target) for node in gm.graph.nodes if node.op == "call_function"})
            return make_boxed_func(gm.forward)

        return compiler

    torch._dynamo.reset()
    model = _model(MODELS[name])
    step = torch.compile(model, fullgraph=True,
                         backend=aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward")))
    step(*_batch()).backward()
    (forward,), (backward,) = graphs["forward"], graphs["backward"]
    assert {"speedrun.relu2_mlp.default", "speedrun.linear_cross_entropy.default"} <= forward, sorted(forward)
    assert "speedrun.relu2_mlp_backward.default" in backward, sorted(backward)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiled_matches_eager_in_bf16(name):
    """The same in the model's bf16 mode (another ~20-40 s compile each): inductor fuses the bf16 elementwise ops
    between the kernels and rounds at other points than eager, so the comparison is at bf16 noise, relative to
    each gradient's size."""
    cfg = MODELS[name]
    dtype, autocast = _bf16(cfg)
    torch._dynamo.reset()
    model = _model(cfg, dtype=dtype)
    idx, targets = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, grads = _loss_and_grads(model, model, idx, targets)
        compiled_loss, compiled_grads = _loss_and_grads(model, torch.compile(model, fullgraph=True), idx, targets)
    torch.testing.assert_close(compiled_loss, loss, rtol=2e-2, atol=1e-2)
    for n, g in grads.items():
        err = (compiled_grads[n].float() - g.float()).norm() / g.float().norm().clamp_min(1e-30)
        assert err < 0.05, f"{n}: relative error {err:.3g} of the compiled gradient"
