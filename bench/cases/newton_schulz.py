"""Newton-Schulz (kernels/newton_schulz.py; its kernels: kernels/jit/gram.py and kernels/jit/newton_schulz.py): the
benchmark case, FLOP and byte models, sm_90 codegen cases."""

import torch

from bench import modded
from bench.cases import Timed, Unavailable, compiled, dtype_name, jit_case
from kernels import newton_schulz as ns
from kernels import registry
from kernels.jit.gram import gram_kernel
from kernels.jit.newton_schulz import ns_update_kernel
from kernels.reference import ns_coefficients
from kernels.tiles import TRITON_DTYPE, precision_flags

PROVIDERS = ("eager", "compile", "triton", "torch_muon", "modded")

# The 124M shapes: an MLP weight (768×3072; the Gram side is 768) and its 768×768 Gram matrix.
M, N = 768, 3072


def ns_flops(M: int, N: int, steps: int, symmetric: bool, batch: int = 1) -> float:
    """FLOPs of `steps` iterations on a (M, N) matrix (either orientation; the Gram side is min(M, N)).

    naive:     XXᵀ 2m²n + A·A 2m³ + B·X 2m²n per step.
    symmetric: the two Gram products only on their m(m+1)/2 distinct entries: m(m+1)n + m²(m+1) + 2m²n.
    naive / symmetric is the speedup ceiling of the symmetric scheme. (The kernels work on whole tiles,
    so they execute a little more than the symmetric count: T(T+1)/2 of T² tiles.)
    """
    m, n = min(M, N), max(M, N)
    if symmetric:
        per_step = m * (m + 1) * n + m * m * (m + 1) + 2 * m * m * n
    else:
        per_step = 4 * m * m * n + 2 * m**3
    return float(batch * steps * per_step)


def ns_bytes(M: int, N: int, steps: int, itemsize: int, batch: int = 1) -> float:
    """Compulsory memory traffic of `steps` fused iterations (each buffer read or written once per kernel):
    XXᵀ reads X, writes A (mn + m²); bA + cA·A reads A twice, writes B (3m²); aX + BX reads X and B,
    writes X (2mn + m²). The Gram matrices stay in L2 on an H100 at 768, so this is a floor, not a forecast."""
    m, n = min(M, N), max(M, N)
    return float(batch * steps * itemsize * (3 * m * n + 5 * m * m))


def ns_case(provider: str, shape, *, steps: int, coefficients: str, device, dtype: torch.dtype,
            compile_backend: str | None = None, modded_path=None) -> Timed:
    """Orthogonalise one bf16/fp32 G of `shape` ((M, N) or a batch (B, M, N) of the same shape), `steps`
    iterations of `coefficients`, as `provider`: eager (kernels.reference, as the optimizer calls it), compile
    (torch.compile of eager), triton (kernels.newton_schulz), torch_muon (torch.optim.Muon's orthogonaliser, one
    2-D call per matrix as it steps; it has one (a, b, c) for all steps) or modded (our iteration on
    modded-nanogpt's XXT/XTX + ba_plus_cAA, bench.modded.newton_schulz). flops: the symmetric (useful) count;
    fields also give the naive 3-matmul count and their ratio, the symmetric scheme's speedup ceiling."""
    G = torch.randn(shape, device=device).to(dtype)
    *lead, rows, cols = G.shape
    batch = lead[0] if lead else 1
    useful = ns_flops(rows, cols, steps, symmetric=True, batch=batch)
    naive = ns_flops(rows, cols, steps, symmetric=False, batch=batch)
    fields = {"shape": list(G.shape), "dtype": dtype_name(dtype), "steps": steps, "coefficients": coefficients,
              "useful_flops": useful, "naive_flops": naive, "flop_ratio": naive / useful}
    if provider in ("eager", "triton", "compile"):
        f = registry.get("newton_schulz", "eager" if provider == "compile" else provider)
        if provider == "compile":
            f = compiled(f, compile_backend)

        def fn():
            return f(G, steps=steps, coefficients=coefficients)
    elif provider == "torch_muon":
        try:
            from torch.optim._muon import _zeropower_via_newtonschulz as zeropower
        except ImportError as exc:
            raise Unavailable(f"torch_muon: torch {torch.__version__} has no torch.optim._muon Newton-Schulz ({exc})")
        coeffs = ns_coefficients(coefficients, steps)
        if len(set(coeffs)) != 1:
            raise Unavailable(f"torch_muon: torch.optim.Muon uses one (a, b, c) for every step; {coefficients!r} "
                              "varies per step")
        mats = G if G.ndim == 3 else G.unsqueeze(0)

        def fn():
            for g in mats:
                zeropower(g, coeffs[0], steps, 1e-7)

        fields["note"] = "torch.optim.Muon's Newton-Schulz, one 2-D call per matrix (as it steps)"
    elif provider == "modded":
        try:
            kernels = modded.kernels_at(modded_path)
        except modded.ModdedUnavailable as exc:
            raise Unavailable(f"modded: {exc}") from None

        def fn():
            return modded.newton_schulz(kernels, G, steps=steps, coefficients=coefficients)

        fields["note"] = "our iteration on modded-nanogpt's XXT/XTX and ba_plus_cAA kernels, baddbmm update"
    else:
        raise ValueError(f"unknown newton_schulz provider {provider!r}; choose from {PROVIDERS}")
    return Timed(fn, flops=useful, bytes=ns_bytes(rows, cols, steps, G.element_size(), batch=batch), fields=fields)


def codegen_cases() -> list:
    """Every (config, kernel specialisation) the launcher can run, at the 124M shapes: SYRK on X (768×3072,
    K = 3072) and on A (768×768); the update on 768×3072 with a row-major output, and with the column-major
    output of the last step of a tall 3072×768 matrix (stride_om = 1). FLOPs are the symmetric (useful)
    count, bytes the compulsory traffic."""
    cases = []
    for (family, dtype), cfg in ns.CONFIGS.items():
        ty, size = TRITON_DTYPE[dtype], dtype.itemsize
        flags = precision_flags(dtype, interpreter=False)
        syrk, update = cfg.syrk, cfg.update
        for fuse, K, label in ((False, N, "XXt"), (True, M, "bA+cAA")):
            args = dict(p_ptr=dtype, add_ptr=dtype, c_ptr=dtype, M=M, K=K, stride_pb=M * K, stride_p=K,
                        stride_ab=M * M, stride_am=M, stride_cb=M * M, stride_cm=M, alpha=1.0, beta=0.0,
                        BLOCK=syrk.block_m, BLOCK_K=syrk.block_k, TRANS_P=False, FUSE_ADD=fuse, ADD_SYMMETRIC=True,
                        EXACT_SYMMETRY=False, **flags)
            cases.append(jit_case(
                "ns_syrk" + ("_poly" if fuse else "_gram"),
                f"{family} {ty} {syrk.block_m}x{syrk.block_n}x{syrk.block_k} {label}", gram_kernel, args,
                num_warps=syrk.warps, num_stages=syrk.stages, flops=M * (M + 1) * K,
                bytes=size * (M * K + (2 if fuse else 1) * M * M)))
        for tall, label in ((False, "aX+BX"), (True, "aX+BX tall")):
            args = dict(x_ptr=dtype, b_ptr=dtype, out_ptr=dtype, M=M, N=N, stride_xb=M * N, stride_xm=N,
                        stride_bb=M * M, stride_bm=M, stride_ob=M * N, stride_om=1 if tall else N,
                        stride_on=M if tall else 1, alpha=1.0, **update.meta(), **flags)
            cases.append(jit_case(
                "ns_update", f"{family} {ty} {update.block_m}x{update.block_n}x{update.block_k} {label}",
                ns_update_kernel, args, num_warps=update.warps, num_stages=update.stages,
                flops=2 * M * M * N, bytes=size * (2 * M * N + M * M)))
    return cases
