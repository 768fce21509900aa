"""The training step and the validation loss, the part of train.Trainer that runs on the device.

`train_step(step)` runs one optimizer step over this rank's micro-batches and returns the loss per token as a 0-dim
tensor on the device, without waiting for the device: a non-finite loss or gradient norm is recorded by the guard
(speedrun/guard.py) for the next boundary to find; `checked=True` (the guard's replay) reads both and names the
first parameter whose gradient is not finite. The learning rate comes from the trainer's `_apply_schedule(step)`,
called first. `evaluate()` returns the val loss per token (one read).

Loss: a model with loss_reduction="sum" (track 3) returns the summed loss of a micro-batch, whose gradients add up to
the gradient of the step's total summed loss; train and val losses are reported per token. With W ranks,
DataParallel averages the gradients over the ranks, so each rank backpropagates W × its sum (track 3 all-reduces a
SUM; a power-of-two W scales exactly).

The trainer provides: cfg, device, model, step_model (compiled or not), optimizer (and its wrapper's
before_forward(step) hook, when it has one), readout (which weights validation reads; updated after each step),
parallel (DataParallel), loader, val (the val batches), val_slice_batches (val batches per --val_slice_tokens slice),
accum (micro-batches per step on this rank), world_size, autocast, guard, micro_batches() and _apply_schedule(step).
"""

import contextlib

import torch

from optim.distributed import all_reduce_mean


class TrainingStep:
    """The step and the evaluation, as methods of the trainer (a mixin: they read its attributes)."""

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Host batch -> device without waiting: a copy from pageable memory may wait for the stream, one from
        pinned memory does not."""
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    @property
    def summed_loss(self) -> bool:
        return self.cfg.model.loss_reduction == "sum"

    def train_step(self, step: int, *, checked: bool = False) -> torch.Tensor:
        """One optimizer step; returns the training loss per token, a float64 0-dim tensor on the device.

        Nothing here waits for the device: a non-finite loss or gradient norm is recorded by the guard for the
        next boundary to find. checked=True reads both at once and raises Diverged (a FloatingPointError) naming
        the step and the first parameter with a non-finite gradient (the replay)."""
        cfg, model = self.cfg, self.model
        self._apply_schedule(step)
        if hasattr(self.optimizer, "before_forward"):  # a wrapper's lookahead moves the weights first
            self.optimizer.before_forward(step)
        total = torch.zeros((), device=self.device)
        for micro, (x, y) in enumerate(self.micro_batches()):
            x, y = self._to_device(x), self._to_device(y)
            with self._autocast():
                loss = self.step_model(x, y)
            self.parallel.prepare_backward(last_micro_batch=micro == self.accum - 1)  # then grads go out as ready
            if self.summed_loss:
                # DataParallel averages over the ranks: W × each rank's sum averages to the sum over all ranks
                # (track 3 all-reduces a SUM); a power-of-two W scales exactly
                (loss * self.world_size).backward()
                total += loss.detach()
            else:
                (loss / self.accum).backward()
                total += loss.detach() / self.accum
        loss_per_token = self.parallel.reduce(total).double()  # waits for every gradient's reduction (on the GPU)
        if self.summed_loss:
            loss_per_token = loss_per_token / (self.accum * cfg.batch_size * cfg.seq_len)  # this rank's tokens
        norm = self.parallel.grad_norm()
        if checked:
            self.guard.check(step, loss_per_token, norm, model.named_parameters())
        else:
            self.guard.record(step, loss_per_token, norm)
        if cfg.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.grad_clip, norm)
        self.parallel.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.readout.update(step + 1)
        return loss_per_token

    @torch.no_grad()
    def evaluate(self, readout: bool = True) -> float:
        """The val loss per token of the weights the run's readout evaluates (readout=False: the trained ones).
        With --val_slice_tokens, the readout's evaluation also leaves each slice's loss in self.val_slices, each
        summed in the same order as the whole, so the first slice's loss is the val loss of a run whose val set is
        that slice."""
        self.model.eval()
        total = torch.zeros((), device=self.device)
        k = self.val_slice_batches if readout else 0
        # allocated before the loop: small tensors kept across the val batches would split the freed logits blocks
        # that the next batch reuses (speedrun.memory.keep_freed_memory), and the heap would grow a block a batch
        sums = torch.zeros(len(self.val) // k if k else 0, device=self.device)
        with self.readout.weights() if readout else contextlib.nullcontext():
            for i, (x, y) in enumerate(self.val):
                with self._autocast():
                    loss = self.step_model(self._to_device(x), self._to_device(y)).float()
                total += loss
                if k:
                    sums[i // k] += loss
        per_token = self.cfg.batch_size * self.cfg.seq_len if self.summed_loss else 1
        total /= len(self.val) * per_token
        all_reduce_mean(total, self.world_size)  # every rank holds the same number of val batches
        if k:
            sums /= k * per_token
            all_reduce_mean(sums, self.world_size)
            self.val_slices = sums.tolist()
        self.model.train()
        return total.item()

    def synchronize(self):
        """Wait for the device's queued work (a no-op on the CPU, whose ops have finished when they return)."""
        torch.get_device_module(self.device).synchronize(self.device)
