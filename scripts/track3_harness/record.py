"""The recorder a rewritten script calls back (init fingerprints, gradients and probe at a perturbed state, each
optimizer step's loss, norms and hyper-parameters, every validation pass), and run_script: one execution of the
script under the CPU patches, in a temporary directory holding its data.
"""

import builtins
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from . import INIT_SEED, PERTURB_STD, RESULTS, ROWS, SEQ, VAL_TOKENS
from .adapt import Adapter, rewrite
from .cpu import CpuMode, patched, streams, write_shard
from .source import Checkout, Script


def fingerprint(t: torch.Tensor) -> dict:
    flat = t.detach().double().flatten()
    return {"norm": flat.norm().item(), "sum": flat.sum().item(), "first": flat[:2].tolist(),
            "last": flat[-2:].tolist()}


def probe(i: int, t: torch.Tensor) -> float:
    r = torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
    return (t.double() * r).sum().item()


def _numbers(items) -> dict:
    out = {}
    for k, v in items:
        if k.startswith("_") or k == "params" or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = v
        elif isinstance(v, (tuple, list)) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                        for x in v):
            out[k] = list(v)
    return out


class Recorder:
    """The __golden__ object the rewritten script calls; hooks the model it constructs and records."""

    def __init__(self, adapter: Adapter, train: torch.Tensor, val: torch.Tensor, record_all: bool):
        self.adapter, self.train, self.val = adapter, train, val
        self.record_all = record_all  # the main run records everything; the peer only the trajectory
        self.model, self.busy, self.initialized = None, False, False
        self.optimizers, self.steps, self.val_passes, self.pending_val = [], [], [], []
        self.pending_losses, self.forward_norms = [], None
        self.out, self.converted = {}, []

    # ---- hooks the script reaches ----
    def on_class(self, name, cls):
        if name == self.adapter.MODEL_CLASS:
            return self._model_class(cls)
        method = self.adapter.RECORD_AFTER.split(".")[1]
        orig = getattr(cls, method)
        recorder = self

        def after(self_, *args, **kwargs):
            result = orig(self_, *args, **kwargs)
            recorder._record_step()
            return result
        setattr(cls, method, after)
        return cls

    def on_optimizer(self, opt):
        self.optimizers.append(opt)

    def _model_class(self, cls):
        recorder = self

        class Model(cls):
            def __init__(self, *args, **kwargs):
                torch.manual_seed(INIT_SEED)
                super().__init__(*args, **kwargs)
                with torch.no_grad():
                    for name, t in [*self.named_parameters(), *self.named_buffers()]:
                        if t.dtype == torch.bfloat16:
                            t.data = t.data.float()
                            recorder.converted.append(name)
                torch.manual_seed(INIT_SEED)
                recorder._attach(self)
        Model.__name__, Model.__qualname__ = cls.__name__, cls.__qualname__
        return Model

    def _attach(self, model):
        if self.model is not None:
            raise SystemExit("the script constructed its model class twice")
        self.model = model
        model.register_forward_pre_hook(self._pre_forward)
        model.register_forward_hook(self._post_forward)
        if self.adapter.RECORD_AFTER == "zero_grad":
            orig = model.zero_grad

            def zero_grad(*args, **kwargs):
                orig(*args, **kwargs)
                if not self.busy and self.pending_losses:
                    self._record_step()
            model.zero_grad = zero_grad

    def _pre_forward(self, module, args):
        if self.busy:
            return
        if not self.initialized:
            self.busy = True
            try:
                self._at_init(module)
            finally:
                self.busy = False
            self.initialized = True
        if module.training and torch.is_grad_enabled() and self.adapter.RECORD_FORWARD_NORMS \
                and not self.pending_losses:
            self.forward_norms = self._norms()

    def _post_forward(self, module, args, output):
        if self.busy:
            return
        if module.training and torch.is_grad_enabled():
            self.pending_losses.append(output.detach().item())
        elif not module.training:
            self.pending_val.append(output.detach().clone())
            if len(self.pending_val) == VAL_TOKENS // (ROWS * SEQ):
                same = [p for p in self.val_passes if p["after_steps"] == len(self.steps)]
                labels = self.adapter.VAL_LABELS
                label = labels[len(same)] if len(same) < len(labels) else f"pass{len(same)}"
                self.val_passes.append({"after_steps": len(self.steps), "label": label,
                                        "loss": self._val_value(self.pending_val)})
                self.pending_val = []

    # ---- what is recorded ----
    def _val_value(self, outputs) -> float:
        total = 0
        for out in outputs:  # as the scripts accumulate: val_loss = 0; val_loss += model(...)
            total += out
        if self.adapter.VAL_DENOMINATOR == "tokens":
            total /= VAL_TOKENS
        else:
            total /= len(outputs)
        return total.item()

    def _batches(self, stream, count):
        out = []
        for i in range(count):
            buf = stream[i * ROWS * SEQ:][:ROWS * SEQ + 1]
            out.append((buf[:-1].to(torch.int32).view(ROWS, SEQ), buf[1:].to(torch.int64).view(ROWS, SEQ)))
        return out

    def _norms(self) -> dict:
        return {n: p.detach().double().norm().item() for n, p in self.model.named_parameters()}

    def _at_init(self, model):
        params = list(model.named_parameters())
        snapshot = [p.detach().clone() for _, p in params]
        grads = [p.grad for _, p in params]
        was_training = model.training
        if self.record_all:
            self.out["init"] = {n: fingerprint(p) for n, p in params}
        # the val loss at init, as the script's validation computes it
        model.eval()
        with torch.no_grad():
            outs = [model(x, y) for x, y in self._batches(self.val, VAL_TOKENS // (ROWS * SEQ))]
        self.out["val_loss_before"] = self._val_value(outs)
        if self.record_all:
            # model-only: loss and gradients at init + seeded noise (every gradient non-zero), step 0's batch
            model.train()
            with torch.no_grad():
                for i, (_, p) in enumerate(params):
                    p.add_(PERTURB_STD * torch.randn(p.shape, generator=torch.Generator().manual_seed(i)))
                    p.grad = None
            (x, y), = self._batches(self.train, 1)
            with torch.enable_grad():
                loss = model(x, y)
                loss.backward()
            self.out["perturbed"] = {"loss": loss.item(), "grads": {
                name: {"norm": p.grad.double().norm().item(), "probe": probe(i, p.grad)}
                for i, (name, p) in enumerate(params)}}
            with torch.no_grad():
                for (_, p), s, g in zip(params, snapshot, grads):
                    p.copy_(s)
                    p.grad = g
        model.train(was_training)
        self.param_names = {id(p): n for n, p in params}

    def _hparams(self) -> dict:
        flat = {}
        for i, opt in enumerate(self.optimizers):
            tag = f"{type(opt).__name__}#{i}"
            for k, v in _numbers(vars(opt).items()).items():
                if k not in ("defaults", "state"):
                    flat[f"{tag}.{k}"] = v
            for j, group in enumerate(opt.param_groups):
                for k, v in _numbers(group.items()).items():
                    flat[f"{tag}.group{j}.{k}"] = v
        return flat

    def _record_step(self):
        record = {}
        first = next((g for opt in self.optimizers for g in opt.param_groups if "initial_lr" in g), None)
        if first is not None and first["initial_lr"]:
            record["lr_factor"] = first["lr"] / first["initial_lr"]
        loss = self.pending_losses
        record["loss"] = loss[0] if len(loss) == 1 else loss
        record["norms"] = self._norms()
        if self.record_all:
            record["hparams"] = self._hparams()
            if self.forward_norms is not None:
                record["norms_at_forward"] = self.forward_norms
        self.pending_losses, self.forward_norms = [], None
        self.steps.append(record)

    def groups(self) -> list:
        out = []
        for i, opt in enumerate(self.optimizers):
            for j, group in enumerate(opt.param_groups):
                out.append({"optimizer": f"{type(opt).__name__}#{i}", "group": j,
                            "params": [self.param_names.get(id(p), "?") for p in group["params"]]})
        return out


def run_script(script: Script, adapter: Adapter, plan: dict, checkout: Checkout, *, emulate_bf16: bool,
               threads: int, record_all: bool) -> dict:
    """Execute the rewritten script once; return what the recorder saw."""
    steps = plan["steps"]
    train, val = streams(steps)
    workdir = Path(tempfile.mkdtemp(prefix="track3_golden_"))
    added_path = None
    try:
        data = workdir / "data" / "fineweb10B"
        data.mkdir(parents=True)
        write_shard(data / "fineweb_train_000001.bin", train)
        write_shard(data / "fineweb_val_000000.bin", val)
        script_file = workdir / (script.name if script.kind == "py" else Path(script.name).stem + ".py")
        script_file.write_text(script.text)
        if adapter.LIBRARY:  # the script imports from its result folder
            if script.disk_folder is not None:
                added_path = str(Path(script.disk_folder).resolve())
            elif checkout.path and script.folder:
                checkout.export(f"{RESULTS}/{script.folder}", workdir / "lib")
                added_path = str(workdir / "lib" / script.folder)
            else:
                raise SystemExit("this result imports from its folder: name the repository with --checkout")
            sys.path.insert(0, added_path)
        hooks = {adapter.MODEL_CLASS} | ({adapter.RECORD_AFTER.split(".")[0]} if "." in adapter.RECORD_AFTER else set())
        code, applied = rewrite(script.text, str(script_file), plan["assign"], plan["kwargs"], plan["defaults"], hooks)
        recorder = Recorder(adapter, train, val, record_all)
        namespace = {"__name__": "__main__", "__file__": str(script_file), "__builtins__": builtins,
                     "__golden__": recorder}
        mode = CpuMode(emulate_bf16)
        with patched(workdir, str(script_file), plan["env"], threads, recorder.on_optimizer), mode:
            exec(code, namespace)
        if recorder.model is None or not recorder.initialized:
            raise SystemExit("the script never called its model")
        if recorder.pending_losses:  # a step without a record point after it
            recorder._record_step()
        if len(recorder.steps) != steps:
            raise SystemExit(f"recorded {len(recorder.steps)} optimizer steps, expected {steps}")
        finals = [p for p in recorder.val_passes if p["after_steps"] == steps]
        if not finals:
            raise SystemExit(f"the script ran no validation after step {steps}")
        return {"recorder": recorder, "applied": applied, "bf16_matmuls": mode.bf16_matmuls,
                "train_tokens": len(train)}
    finally:
        if added_path:
            sys.path.remove(added_path)
            for name, module in list(sys.modules.items()):
                if str(getattr(module, "__file__", "") or "").startswith(added_path):
                    del sys.modules[name]
        shutil.rmtree(workdir, ignore_errors=True)


def trajectory(steps: list) -> list:
    return [{k: s[k] for k in ("lr_factor", "loss", "norms") if k in s} for s in steps]
