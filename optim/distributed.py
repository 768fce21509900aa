"""Data parallelism for the trainer: gradient reduction, the sharded Muon/NorMuon step, sharded optimizer state.

One `DataParallel` wraps the model and the optimizer built by optim.build_optimizer, on world_size ranks
(torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on GPUs, gloo on the CPU). Every rank holds the whole
model. Per step, after the last micro-batch's backward:

    replicated params   (the Adam side of Muon/NorMuon; every parameter under AdamW/SGD)
        gradients all-reduced in flat buckets of ~bucket_mb (a parameter above that alone, in place).
        Each bucket is launched asynchronously from a post-accumulate-grad hook as soon as its last gradient
        is complete, so the communication overlaps the rest of the backward; buckets launch in one fixed
        order on every rank (a ready bucket waits for the ones before it), as collectives must match.
        Every rank then runs the same Adam update on the same averaged gradient.

    Muon matrices       sharded, after modded-nanogpt's Muon: the hidden matrices of one shape are taken
        world_size at a time; the ranks reduce-scatter their gradients so that each rank receives the
        averaged gradient of the matrix it owns (launched from the hooks too), orthogonalizes its share
        (each matrix exactly once across the ranks, batched per shape by Muon.muon_update), and all-gathers
        the updated weights (asynchronous: one shape's gather overlaps the next shape's Newton-Schulz and
        the Adam update). Momentum and NorMuon's second moments exist only on the owner.

Averages are SUM then divide by world_size (gloo has no AVG): with 2 ranks, (g0 + g1) / 2 equals one rank's
accumulation g0/2 + g1/2 bit for bit, since halving is exact. The gradient norm for clipping is computed
as torch.nn.utils.get_total_norm would on one rank: per-tensor norms in parameter order (a Muon matrix's by
its owner, shared through one all-reduce of a vector with zeros elsewhere), then the norm of that vector.

Checkpoints: optimizer_state_dict() gathers each owner's Muon state to rank 0, which saves one whole state;
load_optimizer_state_dict() loads it on every rank and keeps what that rank owns (a run resumed on the same
number of ranks continues bit for bit).
Failures: a collective that fails because a peer died or hung raises PeerError naming this rank and the cause.

Limits: every parameter must receive a gradient every step on every rank (one without, on the last
micro-batch, is reduced as zeros); the Muon shards need an optim.muon.Muon (or subclass: NorMuon), whose
muon_update(group, params) updates any subset of a Muon group's matrices and adam_update() the Adam groups;
any other optimizer has all its parameters replicated. world_size == 1 takes none of these paths.
"""

from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from optim.muon import Muon


def init_process_group(device: torch.device, timeout_s: float):
    """NCCL on CUDA, gloo on the CPU, with `timeout_s` as the bound on any collective waiting for a peer.

    gloo: a peer that dies closes its sockets and the next collective raises at once; a peer that hangs
    makes the waiting collective raise after timeout_s. NCCL: the watchdog aborts a collective that runs past
    timeout_s and tears the process down (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default).
    """
    kwargs = {}
    if device.type == "cuda":
        kwargs["device_id"] = device  # connect eagerly: a missing peer fails here, not at the first step
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            timeout=timedelta(seconds=timeout_s), **kwargs)


def accumulation_steps(grad_accum: int, reference_world_size: int, world_size: int, batch_size: int) -> int:
    """Micro-batches per rank per step so that the global batch is the one of `reference_world_size` ranks.

    grad_accum is the per-rank accumulation at reference_world_size ranks; on world_size ranks each rank runs
    reference_world_size * grad_accum / world_size micro-batches (the gpt2-124m preset's 8 GPUs × 1 become
    4 × 2, 2 × 4 or 1 × 8). reference_world_size=0 means "whatever the world size is": the global batch then
    grows with the number of ranks and each runs grad_accum micro-batches.
    """
    if grad_accum < 1 or reference_world_size < 0:
        raise ValueError(f"grad_accum={grad_accum} must be >= 1 and reference_world_size={reference_world_size} >= 0")
    if reference_world_size == 0:
        return grad_accum
    micro_batches = reference_world_size * grad_accum
    if micro_batches % world_size:
        rows = micro_batches * batch_size
        hint = (f"; for the same tokens per step on {world_size} ranks use --reference_world_size={world_size} "
                f"--grad_accum=1 --batch_size={rows // world_size}" if rows % world_size == 0 else "")
        raise ValueError(
            f"the global batch is {micro_batches} micro-batches of {batch_size} rows a step (reference_world_size="
            f"{reference_world_size} × grad_accum={grad_accum}), which {world_size} ranks cannot share evenly: run on "
            f"a number of ranks that divides {micro_batches}{hint}")
    return micro_batches // world_size


class PeerError(RuntimeError):
    """A collective failed: another rank died, was killed, or stopped responding for longer than the timeout."""


@contextmanager
def peer_errors(what: str):
    """Turn the backend's error from a collective (gloo: "Connection closed by peer", "Timed out waiting
    ...ms"; NCCL: DistBackendError) into a PeerError that says which rank saw what, and why."""
    try:
        yield
    except RuntimeError as e:
        if isinstance(e, PeerError):
            raise
        raise PeerError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: {what} failed because another rank died, was "
            f"killed or stopped responding for longer than --dist_timeout_s; stopping this rank too. The first "
            f"rank to fail has the cause in its log. Backend error: {type(e).__name__}: {e}") from e


def _wait(work, what: str):
    with peer_errors(what):
        work.wait()


def all_reduce_mean(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    """In-place mean over the ranks (a no-op on one rank)."""
    if world_size > 1:
        with peer_errors("the all-reduce of a mean"):
            work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)
        _wait(work, "the all-reduce of a mean")
        tensor.div_(world_size)
    return tensor


class _Bucket:
    """Replicated parameters whose gradients are all-reduced together (flattened unless there is one)."""

    def __init__(self, params, world_size: int):
        self.params, self.pending = params, len(params)  # pending: gradients still to come this step
        self.world_size = world_size
        self.work = self.flat = None

    def launch(self):
        grads = [_grad_or_zeros(p) for p in self.params]
        self.flat = grads[0] if len(grads) == 1 else torch.cat([g.reshape(-1) for g in grads])
        with peer_errors("the gradient all-reduce"):
            self.work = dist.all_reduce(self.flat, op=dist.ReduceOp.SUM, async_op=True)

    def finish(self):
        _wait(self.work, "the gradient all-reduce")
        self.flat.div_(self.world_size)
        if len(self.params) > 1:
            offset = 0
            for p in self.params:
                p.grad.copy_(self.flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        self.work = self.flat = None


class _MuonChunk:
    """Up to world_size same-shape Muon matrices, at most one owned by each rank (`owners[i]` owns params[i])."""

    def __init__(self, params, owners, world_size: int, rank: int):
        self.params, self.pending = params, len(params)  # pending: gradients still to come this step
        self.by_rank = dict(zip(owners, params))
        self.world_size, self.rank = world_size, rank
        self.work = self.out = self.inputs = None

    def launch(self):
        like = self.params[0]
        zeros = None
        self.inputs = []  # inputs[r]: the gradient rank r receives the sum of
        for r in range(self.world_size):
            if r in self.by_rank:
                self.inputs.append(_grad_or_zeros(self.by_rank[r]))
            else:
                zeros = torch.zeros_like(like) if zeros is None else zeros
                self.inputs.append(zeros)
        self.out = torch.empty_like(like)
        with peer_errors("the Muon gradient reduce-scatter"):
            self.work = dist.reduce_scatter(self.out, self.inputs, op=dist.ReduceOp.SUM, async_op=True)

    def finish(self):
        _wait(self.work, "the Muon gradient reduce-scatter")
        for r, p in self.by_rank.items():
            p.grad = self.out.div_(self.world_size) if r == self.rank else None  # only the owner keeps a gradient
        self.work = self.out = self.inputs = None

    def gather(self):
        """Launch the all-gather of the updated weights from their owners; returns the async work handle."""
        slots = [self.by_rank[r].data if r in self.by_rank else torch.empty_like(self.params[0])
                 for r in range(self.world_size)]
        with peer_errors("the Muon weight all-gather"):
            return dist.all_gather(slots, slots[self.rank], async_op=True)


def _is_muon(group: dict) -> bool:
    return bool(group.get("use_muon", False))


def _grad_or_zeros(p):
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


class DataParallel:
    """Gradient synchronisation and the optimizer step of one model/optimizer pair across the ranks.

    Per step:  prepare_backward(last) before each micro-batch's backward → reduce(loss) → grad_norm() →
    (clip) → step(). Checkpoints go through optimizer_state_dict() (a collective) and
    load_optimizer_state_dict().
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, world_size: int, rank: int,
                 bucket_mb: float = 25.0):
        self.model, self.optimizer = model, optimizer
        self.world_size, self.rank = world_size, rank
        self.params = [p for p in model.parameters() if p.requires_grad]
        sharded = isinstance(optimizer, Muon)  # any other optimizer: every parameter replicated
        muon_groups = [i for i, g in enumerate(optimizer.param_groups) if sharded and _is_muon(g)]
        muon_ids = {id(p) for i in muon_groups for p in optimizer.param_groups[i]["params"]}
        self.units, self._unit_of, self._last = [], {}, False
        self.owned: set[int] = set()  # id() of the Muon matrices this rank updates
        # (group index, [chunks of one shape, per shape]): an index, as optimizer.load_state_dict replaces the
        # group dicts
        self.muon_plan = []
        self._muon_index, self._replicated_index = [], []
        if world_size == 1:
            return

        # Launch order follows the backward, which produces gradients roughly in reverse parameter order: a unit
        # is ordered by its parameter that comes last in that order (the one whose gradient completes it).
        position = {id(p): i for i, p in enumerate(reversed(self.params))}
        keyed = []
        bucket, bucket_bytes, cap = [], 0, bucket_mb * 2**20
        for p in reversed(self.params):
            if id(p) in muon_ids:
                continue
            if bucket and (bucket_bytes + p.numel() * p.element_size() > cap or p.dtype != bucket[0].dtype):
                keyed.append((max(position[id(q)] for q in bucket), _Bucket(bucket, world_size)))
                bucket, bucket_bytes = [], 0
            bucket.append(p)
            bucket_bytes += p.numel() * p.element_size()
        if bucket:
            keyed.append((max(position[id(q)] for q in bucket), _Bucket(bucket, world_size)))

        counter = 0  # round-robin owners over all matrices, so the ranks' shares differ by at most one
        for group_index in muon_groups:
            by_shape = defaultdict(list)
            for p in sorted(optimizer.param_groups[group_index]["params"], key=lambda q: position[id(q)]):
                by_shape[tuple(p.shape)].append(p)
            shapes = []
            for same in by_shape.values():
                chunks = []
                for start in range(0, len(same), world_size):
                    params = same[start : start + world_size]
                    owners = [(counter + i) % world_size for i in range(len(params))]
                    counter += len(params)
                    chunks.append(_MuonChunk(params, owners, world_size, rank))
                    keyed.append((max(position[id(q)] for q in params), chunks[-1]))
                    self.owned.update(id(q) for q, r in zip(params, owners) if r == rank)
                shapes.append(chunks)
            self.muon_plan.append((group_index, shapes))

        self.units = [unit for _, unit in sorted(keyed, key=lambda item: item[0])]
        self._muon_index = [i for i, p in enumerate(self.params) if id(p) in muon_ids]
        self._replicated_index = [i for i, p in enumerate(self.params) if id(p) not in muon_ids]
        for unit in self.units:
            for p in unit.params:
                self._unit_of[id(p)] = unit
                p.register_post_accumulate_grad_hook(self._on_grad_ready)
        self._next = 0  # the first unit not launched yet this step

    # --- gradients ---------------------------------------------------------------------------------

    def prepare_backward(self, last_micro_batch: bool):
        """Call before each micro-batch's backward: on the last one, gradients are sent as they complete."""
        self._last = last_micro_batch

    def _on_grad_ready(self, p):
        if not self._last:
            return
        unit = self._unit_of[id(p)]
        unit.pending -= 1
        while self._next < len(self.units) and self.units[self._next].pending == 0:
            self.units[self._next].launch()
            self._next += 1

    def reduce(self, loss: torch.Tensor) -> torch.Tensor:
        """Finish every gradient reduction (launching units whose hooks did not fire) and return the mean loss."""
        if self.world_size == 1:
            return loss
        for unit in self.units[self._next :]:
            unit.launch()
        with peer_errors("the loss all-reduce"):
            loss_work = dist.all_reduce(loss, op=dist.ReduceOp.SUM, async_op=True)
        for unit in self.units:
            unit.finish()
            unit.pending = len(unit.params)
        self._next, self._last = 0, False
        _wait(loss_work, "the loss all-reduce")
        return loss.div_(self.world_size)

    @torch.no_grad()
    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the averaged gradient, as torch.nn.utils.get_total_norm gives on one rank."""
        if not self.muon_plan:  # every gradient is here, averaged
            return torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        # per-parameter norms in parameter order; a Muon matrix's comes from its owner (zeros elsewhere: x + 0 = x)
        norms = torch.zeros(len(self.params), device=self.params[0].device)  # (P,)
        held = [i for i, p in enumerate(self.params) if p.grad is not None]
        norms[held] = torch.stack(torch._foreach_norm([self.params[i].grad for i in held])).to(norms.dtype)
        sharded = norms.clone()
        sharded[self._replicated_index] = 0.0
        with peer_errors("the gradient-norm all-reduce"):
            work = dist.all_reduce(sharded, op=dist.ReduceOp.SUM, async_op=True)
        _wait(work, "the gradient-norm all-reduce")
        norms[self._muon_index] = sharded[self._muon_index]
        return torch.linalg.vector_norm(norms)

    # --- optimizer step ----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self):
        if self.world_size == 1 or not self.muon_plan:
            self.optimizer.step()  # replicated: every rank applies the same update
            return
        gathers = []
        for group_index, shapes in self.muon_plan:
            group = self.optimizer.param_groups[group_index]  # read now: lr changes every step
            for chunks in shapes:
                mine = [c.by_rank[self.rank] for c in chunks if self.rank in c.by_rank]
                if mine:
                    self.optimizer.muon_update(group, mine)  # one batched orthogonalization per shape of this share
                gathers += [c.gather() for c in chunks]
        self.optimizer.adam_update()
        for work in gathers:
            _wait(work, "the Muon weight all-gather")

    # --- checkpoints -------------------------------------------------------------------------------

    def optimizer_state_dict(self):
        """The whole optimizer state on rank 0 (None elsewhere); a collective: every rank must call it."""
        state = self.optimizer.state_dict()
        if self.world_size == 1 or not self.muon_plan:
            return state
        index = self._state_index()
        mine = {index[id(p)]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in self.optimizer.state[p].items()}
                for p in self.params if id(p) in self.owned and p in self.optimizer.state}
        gathered = [None] * self.world_size if self.rank == 0 else None
        with peer_errors("the gather of the optimizer state for a checkpoint"):
            dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        for shard in gathered:
            state["state"].update(shard)
        return state

    def load_optimizer_state_dict(self, state: dict):
        """Load a full state (from optimizer_state_dict) and keep only what this rank updates."""
        self.optimizer.load_state_dict(state)
        for i in self._muon_index:
            p = self.params[i]
            if id(p) not in self.owned:
                self.optimizer.state.pop(p, None)

    def _state_index(self):
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return {id(p): i for i, p in enumerate(params)}
