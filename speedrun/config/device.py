"""What "auto" means on the device a run is on: one answer for train.py, the memory check and the benches."""

import dataclasses

from speedrun.cli import ConfigError
from speedrun.config.schema import TrainConfig


def device_type(device: str) -> str:
    """The device type a run with --device=`device` uses: "auto" is CUDA when torch sees a GPU, else the CPU."""
    import torch

    if device != "auto":
        return torch.device(device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_auto(cfg: TrainConfig, device, *, bf16_native: bool | None = None) -> TrainConfig:
    """The config a run on `device` executes: every "auto" replaced by that device's choice, explicit values kept.

        field                           "auto" on CUDA                         "auto" elsewhere (the CPU)
        device                          the device's type
        dtype                           bf16 where bf16 matmuls are native (kernels.device.native_bf16), else fp32
        model.attention_impl            fa3 > fa2 > sdpa, the best that runs   sdpa
        model.relu2_mlp_impl            triton                                 eager
        model.linear_cross_entropy_impl triton                                 chunked (one compiled pass per row)
        optimizer fields                the optimizer config's own resolve_auto (Muon: newton_schulz_impl triton
                                        on CUDA, eager elsewhere; ns_dtype as dtype)
        compile                         fullgraph                              off

    The attention choice is kernels.attention_select.select_backend's, for the run's compute dtype and head dim;
    an explicit backend that cannot run on `device` raises there, and so does an explicit triton kernel off CUDA
    without Triton's interpreter (_check_triton_runs). bf16_native replaces the native_bf16 probe (speedrun.memory
    estimates a CUDA step on a machine without a GPU).
    """
    import torch

    from kernels import attention_select
    from kernels import device as kernel_device

    device = torch.device(device)
    cuda = device.type == "cuda"
    native = kernel_device.native_bf16(device) if bf16_native is None else bf16_native

    def kernel(name: str, cpu: str = "eager") -> str:
        return ("triton" if cuda else cpu) if name == "auto" else name

    dtype = ("bf16" if native else "fp32") if cfg.dtype == "auto" else cfg.dtype
    compute = torch.bfloat16 if dtype == "bf16" else torch.float32
    try:
        attention = attention_select.select_backend(cfg.model.attention_impl, device, compute, cfg.model.head_dim)
    except (TypeError, ValueError) as e:  # an explicit backend that does not take this dtype or head dim
        raise ConfigError(f"--model.attention_impl: {e}") from e
    model = dataclasses.replace(cfg.model, attention_impl=attention, relu2_mlp_impl=kernel(cfg.model.relu2_mlp_impl),
                                linear_cross_entropy_impl=kernel(cfg.model.linear_cross_entropy_impl, cpu="chunked"))
    optim = cfg.optim
    if hasattr(optim, "resolve_auto"):
        optim = optim.resolve_auto(device, native_bf16=native)
    if not cuda:
        kernels = [("model.relu2_mlp_impl", model.relu2_mlp_impl), ("model.linear_cross_entropy_impl",
                                                                    model.linear_cross_entropy_impl)]
        if dataclasses.is_dataclass(optim):
            kernels += [(f"optim.{f.name}", getattr(optim, f.name)) for f in dataclasses.fields(optim)
                        if f.name.endswith("_impl")]
        _check_triton_runs(device, kernels)
    compile_mode = ("fullgraph" if cuda else "off") if cfg.compile == "auto" else cfg.compile
    return dataclasses.replace(cfg, device=device.type, dtype=dtype, model=model, optim=optim, compile=compile_mode)


def _check_triton_runs(device, implementations):
    """A triton implementation off CUDA runs only under Triton's interpreter (TRITON_INTERPRET=1, set before the
    command): without it, or where the interpreter cannot run (kernels.device.interpreter_unavailable_reason),
    refuse it now, before anything is built, instead of failing in the first forward after the warm-up."""
    from kernels import device as kernel_device

    for option, impl in implementations:
        if impl != "triton":
            continue
        why = (kernel_device.interpreter_unavailable_reason() if kernel_device.is_interpreter() else
               "Triton kernels run on CUDA GPUs, or on the CPU under Triton's interpreter, slowly, with "
               "TRITON_INTERPRET=1 set before the command")
        if why:
            raise ConfigError(f"--{option}=triton cannot run on {device.type}: {why}; use --{option}=auto (the "
                              "device's choice) or eager")

