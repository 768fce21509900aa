"""Wrappers: an optimizer around any inner optimizer (`--wrapper NAME`, `--wrapper.FIELD=value`).

A wrapper is what the trainer steps: its param_groups are the inner optimizer's (the schedule sets their lr and
momentum), step() steps the inner optimizer and then the wrapper's own update, before_forward(step) runs before
each step's forward pass (a lookahead moves the weights there), and state_dict() holds the inner optimizer's state
and the wrapper's, so a checkpoint round-trips both. A wrapper module registers make(cfg, optimizer, model) with
optim.registry.wrapper; every parameter the wrapper keeps state for is one of the model's, indexed in
model.parameters() order in the state dict.
"""

import torch


class Wrapper:
    """Base of every wrapper: delegates to `inner`; subclasses add before_forward() and after_inner_step()."""

    def __init__(self, inner, params):
        self.inner = inner
        self.params = list(params)
        self.state: dict[torch.Tensor, dict] = {}  # parameter -> its tensors (like torch.optim.Optimizer.state)
        self.steps = 0  # optimizer steps taken

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def defaults(self) -> dict:
        return getattr(self.inner, "defaults", {})

    def before_forward(self, step: int):
        """Called before the forward pass of step `step` (0-based)."""

    def after_inner_step(self):
        """Called after the inner optimizer's step."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = self.inner.step(closure) if closure is not None else self.inner.step()
        self.after_inner_step()
        self.steps += 1
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        index = {p: i for i, p in enumerate(self.params)}
        return {"inner": self.inner.state_dict(), "steps": self.steps,
                "wrapper": {index[p]: dict(s) for p, s in self.state.items()}}

    def load_state_dict(self, state: dict):
        self.inner.load_state_dict(state["inner"])
        self.steps = state["steps"]
        self.state = {}
        for i, s in state["wrapper"].items():
            p = self.params[int(i)]
            self.state[p] = {k: v.to(device=p.device) if torch.is_tensor(v) else v for k, v in s.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"
