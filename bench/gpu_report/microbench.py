"""Stage 3, microbench: every op's benchmark case (bench/cases/, the same factories the pytest benches call) at the
gpt2-124m and track-3 shapes, timed with bench.harness's timer.

Ops: Newton-Schulz over the model's weight shapes, the fused linear cross-entropy, the ReLU² MLP (forward and
backward) and the attention backends (causal, windowed, document-masked). Providers: eager, torch.compile, triton,
chunked, and the peers (torch.optim.Muon's Newton-Schulz, Liger, modded-nanogpt's kernels with --modded-nanogpt,
FlashAttention). A provider that cannot run a case here is "not available" with the reason, not a failure. The
shapes and the track-3 variants (the head's bias, algebraic softcap and summed loss; the MLP's biases; the
attention scale) come from the presets in speedrun.config.PRESETS. Rows run in priority tiers (lower first) and each row
is written as "pending" first, so a report cut short still lists the whole plan.
"""

import os
import time
from dataclasses import dataclass
from typing import Callable

from bench.gpu_report.runner import Stage, json_safe, short_error
from bench.gpu_report.timing import free, sync, timer

CASE_PRESETS = {"124m": "gpt2-124m", "track3": "track3"}  # case name -> speedrun.config.PRESETS entry
DRY_VOCAB = 256
DRY_NS_BATCH = 2  # dry run: matrices per Newton-Schulz call (the model has more of each shape)


class NotAvailable(Exception):
    """This implementation cannot run here: recorded as 'not available' with the reason."""


@dataclass
class Case:
    """The shapes of one benchmark case (a preset's model at its training micro-batch)."""

    name: str
    source: str  # where the shapes come from
    d: int
    n_head: int
    head_dim: int
    vocab: int
    mlp: int
    batch: int
    seq: int
    softcap: float | None
    softcap_kind: str
    reduction: str
    bias: bool  # the head and the MLP have biases (track 3)
    ns_steps: int
    ns_coefficients: str
    hidden_shapes: list  # [(label, count, rows, cols)]
    attn_scale: float | None = None

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def _hidden_shapes(model_cfg) -> list[tuple[str, int, int, int]]:
    """The Muon matrices of the model, grouped by shape as the optimizer batches them: (label, count, rows, cols);
    the label names the parameters of that shape ('attn.{c_k,c_proj,c_q,c_v}'), the same at every model size."""
    import torch

    from model.gpt import GPT
    from optim import param_groups

    with torch.device("meta"):
        model = GPT(model_cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    by_shape: dict[tuple, list[str]] = {}
    for p in param_groups(model)["hidden"]:
        leaf = names[id(p)].split(".", 2)[-1].removesuffix(".weight")  # blocks.3.attn.c_q.weight -> attn.c_q
        by_shape.setdefault(tuple(p.shape), []).append(leaf)
    out = []
    for (rows, cols), leaves in by_shape.items():
        unique = sorted(set(leaves))
        prefix = os.path.commonprefix(unique)
        prefix = prefix[: prefix.rfind(".") + 1] if "." in prefix else ""
        label = unique[0] if len(unique) == 1 else prefix + "{" + ",".join(u[len(prefix):] for u in unique) + "}"
        out.append((label, len(leaves), rows, cols))
    return out


def benchmark_cases(dry_run: bool) -> list[Case]:
    """The gpt2-124m and track-3 cases from speedrun.config.PRESETS ("auto" implementations resolved as on the CPU:
    only the shapes are read). A dry run keeps each case's structure and shrinks the dimensions to the tiny model's."""
    import dataclasses

    from model.config import model_preset
    from speedrun.config import PRESETS, resolve, resolve_auto

    cases = []
    for name, preset_name in CASE_PRESETS.items():
        resolved = resolve_auto(resolve([f"--preset={preset_name}"]), "cpu")
        model_cfg, optim = resolved.model, resolved.optim
        preset = PRESETS[preset_name]()
        batch, seq, ns_steps = preset.batch_size, preset.seq_len, optim.ns_steps
        source = f"speedrun.config.PRESETS[{preset_name!r}]"
        if dry_run:  # the interpreter runs programs one after another: keep every launch small
            tiny = model_preset("tiny")
            model_cfg = dataclasses.replace(model_cfg, n_layer=tiny.n_layer, n_head=tiny.n_head, n_embd=tiny.n_embd,
                                            max_seq_len=tiny.max_seq_len)
            batch, seq, ns_steps = 1, 32, 2
            source += f"; dry run: tiny model (d {tiny.n_embd}), 1×32 tokens, vocab {DRY_VOCAB}, 2 NS steps"
        cases.append(Case(name=name, source=source, d=model_cfg.n_embd, n_head=model_cfg.n_head,
                          head_dim=model_cfg.n_embd // model_cfg.n_head,
                          vocab=DRY_VOCAB if dry_run else model_cfg.vocab_size,
                          mlp=model_cfg.mlp_ratio * model_cfg.n_embd, batch=batch, seq=seq,
                          softcap=model_cfg.logit_softcap, softcap_kind=model_cfg.softcap_kind,
                          reduction=model_cfg.loss_reduction, bias=model_cfg.bias, ns_steps=ns_steps,
                          ns_coefficients=optim.ns_coefficients, hidden_shapes=_hidden_shapes(model_cfg),
                          attn_scale=model_cfg.attn_scale))
    return cases


@dataclass
class Row:
    kernel: str
    case: Case
    variant: str
    provider: str
    tier: int  # priority: lower runs first
    setup: Callable  # setup() -> bench.cases.Timed, or raises bench.cases.Unavailable
    heavy: bool = False  # compiles something (torch.compile / flex): needs more time to start

    @property
    def key(self) -> str:
        return f"{self.kernel}/{self.case.name}/{self.variant}/{self.provider}"


def _common(ctx) -> dict:
    import torch

    return {"device": ctx.device, "dtype": torch.bfloat16}


def _ns_rows(case: Case, ctx) -> list[Row]:
    from bench.cases.newton_schulz import ns_case

    rows = []
    for label, count, rows_, cols in case.hidden_shapes:
        shape = (min(count, DRY_NS_BATCH) if ctx.dry_run else count, rows_, cols)
        for provider, tier in (("eager", 0), ("triton", 0), ("torch_muon", 1), ("modded", 1), ("compile", 3)):
            def setup(provider=provider, shape=shape):
                return ns_case(provider, shape, steps=case.ns_steps, coefficients=case.ns_coefficients,
                               compile_backend=_backend(ctx), modded_path=ctx.options.get("modded"), **_common(ctx))

            rows.append(Row("newton_schulz", case, label, provider, tier + (case.name != "124m"), setup,
                            heavy=provider == "compile"))
    return rows


def _lce_rows(case: Case, ctx) -> list[Row]:
    from bench.cases.linear_cross_entropy import lce_case

    variants = [("fwd+bwd", case.softcap)] + ([] if case.bias else [("fwd+bwd.nocap", None)])
    rows = []
    for variant, softcap in variants:
        providers = [("eager", 0), ("triton", 0), ("liger", 1), ("chunked", 2)]
        if variant == "fwd+bwd":
            providers += [("modded", 1), ("compile", 3)]
        for provider, tier in providers:
            def setup(provider=provider, softcap=softcap):
                return lce_case(provider, case.tokens, case.d, case.vocab, softcap=softcap,
                                 softcap_kind=case.softcap_kind, bias=case.bias, reduction=case.reduction,
                                 compile_backend=_backend(ctx), modded_path=ctx.options.get("modded"), **_common(ctx))

            tier += (variant != "fwd+bwd") + (case.name != "124m")
            rows.append(Row("linear_cross_entropy", case, variant, provider, tier, setup, heavy=provider == "compile"))
    return rows


def _mlp_rows(case: Case, ctx) -> list[Row]:
    from bench.cases.relu2_mlp import mlp_case

    rows = []
    for mode in ("forward", "backward"):
        for provider, tier in (("eager", 0), ("triton", 0), ("liger", 1), ("modded", 1), ("compile", 3)):
            def setup(provider=provider, mode=mode):
                return mlp_case(provider, case.tokens, case.d, case.mlp, mode=mode, biases=case.bias,
                                compile_backend=_backend(ctx), modded_path=ctx.options.get("modded"), **_common(ctx))

            rows.append(Row("relu2_mlp", case, mode, provider, tier + (case.name != "124m"), setup,
                            heavy=provider == "compile"))
    return rows


ATTENTION_PROVIDERS = ("eager", "sdpa", "fa3", "fa2", "fa4", "flex")


def _attention_rows(case: Case, ctx) -> list[Row]:
    from bench.cases.attention import attention_case

    B, T, H, D = case.batch, case.seq, case.n_head, case.head_dim
    masks = ["causal", "window", "docs"] if case.name == "124m" else ["causal"]
    rows = []
    for mask in masks:
        for mode in ("fwd", "bwd"):
            for provider in ATTENTION_PROVIDERS:
                def setup(provider=provider, mask=mask, mode=mode):
                    t = attention_case(provider, B, T, H, D, backward=mode == "bwd", mask=mask, scale=case.attn_scale,
                                       doc_lengths=(max(T // 32, 1), T), **_common(ctx))
                    t.fields["shape"] = dict(zip("BTHD", t.fields["shape"]))
                    return t

                tier = (4 if provider == "flex" else 0 if mask == "causal" else 2) + (case.name != "124m")
                rows.append(Row("attention", case, f"{mask}.{mode}", provider, tier, setup, heavy=provider == "flex"))
    return rows


def _backend(ctx) -> str | None:
    """torch.compile's backend: inductor on a GPU; "eager" in a dry run (traces, generates no code: seconds)."""
    return "eager" if ctx.dry_run else None


def microbench_rows(ctx) -> list[Row]:
    rows = []
    for case in benchmark_cases(ctx.dry_run):
        rows += _ns_rows(case, ctx) + _lce_rows(case, ctx) + _mlp_rows(case, ctx) + _attention_rows(case, ctx)
    return rows


def jit_kernels() -> list[dict]:
    """Every variant the Triton JIT compiled (and loaded) of the kernels bench.codegen has cases for: registers,
    spills. (Under the interpreter the kernels are not JITFunctions: nothing is compiled, the list is empty.)"""
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:
        return []
    from bench.codegen import all_cases

    out = []
    for attr in {id(c.fn): c.fn for c in all_cases()}.values():
        if not isinstance(attr, JITFunction):
            continue
        module_name = attr.fn.__module__
        for caches in list(attr.device_caches.values()):
            kernel_cache = caches[0]  # (kernel_cache, key_cache, target, backend, binder) in triton 3.6-3.9
            for kernel in list(kernel_cache.values()):
                n_regs = getattr(kernel, "n_regs", None)
                if n_regs is None or not hasattr(kernel, "metadata"):
                    continue  # compiled but never loaded (or still compiling)
                src = kernel.src
                names = attr.arg_names
                constexprs = {names[k[0]]: v for k, v in src.constants.items()
                              if isinstance(k, tuple) and len(k) == 1}
                out.append({"module": module_name, "fn": attr.__name__, "name": kernel.name,
                            "num_warps": kernel.metadata.num_warps, "num_stages": kernel.metadata.num_stages,
                            "shared_bytes": kernel.metadata.shared, "n_regs": n_regs,
                            "spill_bytes": 4 * kernel.n_spills, "constexprs": json_safe(constexprs),
                            "pointer_types": {k: v for k, v in src.signature.items()
                                              if isinstance(v, str) and v.startswith("*")}})
    return out


def _row_fields(r: Row, status: str | None = None) -> dict:
    fields = {"kernel": r.kernel, "case": r.case.name, "variant": r.variant, "provider": r.provider}
    if status:
        fields.update(key=r.key, status=status)
    return fields


def _run_row(ctx, r: Row, time_ms) -> str:
    """Set up, warm, time and record one row; returns its status."""
    from bench import harness
    from bench.cases import Unavailable

    t, failed, status = None, False, "ok"
    try:
        t0 = time.time()
        t = r.setup()
        t.fn()  # first call: compilation, autotuning, allocation — outside the timed rounds
        sync(ctx.device)
        first = time.time() - t0
        med, p20, p80 = time_ms(t.fn)
        peak = harness.peak_memory_bytes(t.fn, ctx.device)[1] / 2**20 if ctx.device == "cuda" else None
        ctx.row(r.key, "ok", **_row_fields(r), ms=med, ms_p20=p20, ms_p80=p80, flops=t.flops,
                tflops=t.flops / (med * 1e-3) / 1e12 if t.flops else None, peak_mem_mb=peak, first_call_s=first,
                **t.fields)
    except Unavailable as exc:
        status = "not available"
        ctx.row(r.key, status, reason=str(exc), **_row_fields(r))
    except Exception as exc:  # noqa: BLE001 - one failing row (an OOM, a compile error) must not end the stage
        failed, status = True, "failed"
        ctx.row(r.key, status, error=short_error(exc), **_row_fields(r))
    finally:
        t = None
        free(ctx.device, collect=failed)
    return status


def run(ctx):
    time_ms, how = timer(ctx)
    ctx.info(timer=how, cases=[dict(vars(c)) for c in benchmark_cases(ctx.dry_run)])
    rows = sorted(microbench_rows(ctx), key=lambda r: r.tier)  # stable: natural order within a tier
    for r in rows:  # every key appears from the start, so a cut-short report still lists the whole plan
        ctx._write({"row": _row_fields(r, "pending")})
    skipped, statuses = 0, {}
    for r in rows:
        need = (3.0 if ctx.dry_run else 45.0) if r.heavy else (0.5 if ctx.dry_run else 3.0)
        if ctx.remaining() < need:
            skipped += 1
            ctx.row(r.key, "skipped", reason=f"time box: {max(ctx.remaining(), 0):.0f} s left, this row needs "
                                              f"~{need:.0f} s", **_row_fields(r))
            continue
        status = _run_row(ctx, r, time_ms)
        statuses[status] = statuses.get(status, 0) + 1
        if r.provider == "triton" and not ctx.dry_run:
            ctx.info(jit_kernels=jit_kernels())
    ctx.info(jit_kernels=jit_kernels())
    if skipped:
        statuses["skipped"] = skipped
    ctx.end("partial" if skipped else "done", reason=f"{skipped} of {len(rows)} rows not started: time box"
            if skipped else None, summary=", ".join(f"{n} {s}" for s, n in statuses.items()))


STAGE = Stage("microbench", "kernels vs eager / torch.compile / peers at the 124M and track-3 shapes", run, min_s=30,
              cap_s=150, dry_min_s=15)
