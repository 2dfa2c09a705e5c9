"""One engine pass for inputs routed to different Dual RS levels.

Each engine pass (``sampling.count_votes``) pays a batch probe (three small forward calls)
and a partial last batch, so a pass per expert costs more than one pass that serves every
level. ``LevelRoutes`` is Dual RS's routed classifier as one model: the engine calls it as
model(x_noisy, sigma_rows) and it sends each row to the module of its level, known from the
row's noise level. ``level_counts`` counts every input's votes that way: the classifier of
its level, or for the level whose expert the estimator derives from, ``JointVotes`` (class
and level votes from one forward call, ``derived_estimator``).

The counts are those of one pass per module: a row's noise is a pure function of
(seed, id, stream, sample index), whichever pass draws it, and each module votes on its own
logits (argmax in their own dtype, ties to the first class, as the vote kernels). Like any
change of batch composition, a module may round its logits differently in another batch
(``batch_probe``), which only matters at exact ties.

One pass needs the levels in use to differ in float32 (the engine passes sigma_rows as
float32) and their modules to sit on one device; otherwise ``level_counts`` makes one pass
per module, as before. The engine's batch probe takes its rows from the pass's first
inputs, which are ordered so that every module gets some in both halves of the probe's
batch; a module serving a single input (where the pass has more than a few) is probed on
its own.
"""
import functools
from typing import Optional, Sequence, Tuple

import torch

from .batch_probe import PROBE_ROWS, check_batch_independent
from .derived_estimator import split_joint
from .sampling import Draw, count_votes, model_device
from .validation import check_logits


class LevelRoutes(torch.nn.Module):
    """Dual RS's routed classifier as one model, called as model(x_noisy, sigma_rows): each
    row goes to the route of its level, known from its noise level (sigma_rows, float32 as
    the engine passes it; a row at no level gets NaN logits, which the engine refuses). One
    engine pass then serves inputs routed to different experts (one forward call per route
    and batch). Logits of routes with different dtypes are promoted (exactly) to a common one."""

    def __init__(self, routes: Sequence[torch.nn.Module], sigmas: Sequence[float]):
        super().__init__()
        self.level_sigmas = torch.tensor(sigmas, dtype=torch.float32)
        if self.level_sigmas.unique().numel() != len(sigmas):
            raise ValueError(f"one pass for all levels needs levels that differ in float32, "
                             f"got {sigmas}")
        self.routes = torch.nn.ModuleList(routes)

    def forward(self, x: torch.Tensor, sigma_rows: torch.Tensor) -> torch.Tensor:
        groups = {}  # routes sharing one model get their rows in one call
        for k, route in enumerate(self.routes):
            groups.setdefault(id(route), (route, []))[1].append(k)
        parts = []
        for route, ks in groups.values():
            rows = torch.isin(sigma_rows, self.level_sigmas[ks].to(sigma_rows.device))
            if rows.all():
                return route(x, sigma_rows)
            if rows.any():
                parts.append((rows, route(x[rows], sigma_rows[rows])))
        if not parts:
            return x.new_full((x.shape[0], 1), float("nan"))
        # a narrower dtype would merge near-tied logits of a wider one: promote, never round
        dtype = functools.reduce(torch.promote_types, (p.dtype for _, p in parts))
        out = parts[0][1].new_full((x.shape[0], parts[0][1].shape[1]), float("nan"),
                                   dtype=dtype)
        for rows, logits in parts:
            out[rows] = logits.to(dtype)
        return out


class JointRoute(torch.nn.Module):
    """``JointVotes`` called as a route, model(x_noisy, sigma_rows) (sigma unused)."""

    def __init__(self, joint: torch.nn.Module):
        super().__init__()
        self.joint = joint

    def forward(self, x, sigma_rows):
        return self.joint(x)


class ClassColumns(torch.nn.Module):
    """A route's logits in ``JointVotes``' layout (class c's column at c * num_levels), so
    its rows share a pass with joint rows: the other columns hold the row's smallest logit,
    so the first maximal column is (first maximal class) * num_levels, ties included, and a
    row with a non-finite logit stays non-finite (refused by the engine as before). Logits,
    not one-hot votes, so the engine's batch probe still compares them."""

    def __init__(self, route: torch.nn.Module, num_levels: int):
        super().__init__()
        self.route, self.num_levels = route, num_levels

    def forward(self, x, sigma_rows):
        logits = self.route(x, sigma_rows)
        check_logits(logits, x.shape[0], None)
        out = logits.amin(1, keepdim=True).repeat(1, logits.shape[1] * self.num_levels)
        out[:, ::self.num_levels] = logits
        return out


def _active(draws: Sequence[Draw]) -> list:
    """Indices of the draws with a sample for some input (a pass skips the empty ones)."""
    return [i for i, d in enumerate(draws) if int(torch.as_tensor(d.num_samples).sum()) > 0]


def _count_draws(model, x, sigma, ids, draws, **kw) -> torch.Tensor:
    """count_votes over the draws with samples; zero counts for the others."""
    active = _active(draws)
    counts = count_votes(model, x, sigma, [draws[i] for i in active], ids=ids, **kw)
    out = counts.new_zeros((len(draws),) + tuple(counts.shape[1:]))
    out[active] = counts
    return out


def _probe_first(groups: torch.Tensor) -> torch.Tensor:
    """An order of the inputs taking each group in turn: the engine's batch probe takes one
    row of each of the first PROBE_ROWS inputs (cycling), so a module with two inputs or more
    gets probe rows in both halves of the probe's batch, as on a pass of its own."""
    rank = torch.zeros_like(groups)
    for g in groups.unique():
        at = groups == g
        rank[at] = torch.arange(int(at.sum()))
    return torch.argsort(rank * (int(groups.max()) + 1) + groups, stable=True)


def _unprobed(groups: torch.Tensor) -> list:
    """Groups (in pass order) whose rows the engine's batch probe would not put in both
    halves of its batch: the probe cannot see their module couple rows."""
    probed = groups[torch.arange(PROBE_ROWS) % groups.shape[0]]
    half = PROBE_ROWS // 2
    return [int(g) for g in groups.unique()
            if not (bool((probed[:half] == g).any()) and bool((probed[half:] == g).any()))]


def _probe_alone(module, x_one: torch.Tensor, sigma: float) -> None:
    """The engine's batch probe for a module that serves one input of a shared pass:
    PROBE_ROWS noisy copies of it (noise from a fixed generator: a probe's votes are not
    counted)."""
    device = model_device(module, x_one.device)
    noise = torch.randn((PROBE_ROWS,) + tuple(x_one.shape), dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    rows = (x_one.double().cpu() + sigma * noise).to(x_one.dtype).to(device)
    sigma_rows = torch.full((PROBE_ROWS,), sigma, dtype=torch.float32, device=device)
    with torch.no_grad():
        check_batch_independent(lambda part: module(rows[part], sigma_rows[part]))


def one_pass_possible(modules: dict, sigmas: Sequence[float], device: torch.device) -> bool:
    """Can one ``LevelRoutes`` pass serve these levels' modules ({level: module})?"""
    levels = sorted(modules)
    if torch.tensor([sigmas[k] for k in levels], dtype=torch.float32).unique().numel() != \
            len(levels):
        return False
    return len({model_device(modules[k], device) for k in levels}) == 1


def level_counts(dual, x: torch.Tensor, ids: torch.Tensor, level: torch.Tensor,
                 draws: Sequence[Draw], *, seed: int, batch_size: int, progress,
                 joint: Optional[Tuple[int, torch.nn.Module]] = None, desc: str = "classifier",
                 one_pass: bool = True) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Votes of each input x[i] at its level's sigma: its level's classifier route, or with
    ``joint`` = (level, JointVotes), that module for the inputs at that level (whose sigma
    must be the estimator's). draws: per input (tensor num_samples / start of length B).
    -> (class counts (len(draws), B, K), level counts (len(draws), B, L) where ``joint``
    is given (meaningful for its inputs only), else None). One engine pass where possible
    (``one_pass_possible``; one_pass=False forces a pass per module)."""
    num_levels = len(dual.sigmas)
    used = sorted(level.unique().tolist())
    joint_level, joint_model = joint if joint is not None and joint[0] in used else (None, None)
    wrapped = {}  # one wrapper per route object: levels sharing a model stay one call

    def module(k):
        if k == joint_level:
            return JointRoute(joint_model)
        route = dual.routes[k]
        if joint_level is None:
            return route
        return wrapped.setdefault(id(route), ClassColumns(route, num_levels))
    modules = {k: module(k) for k in used}
    sigma = torch.tensor(dual.sigmas, dtype=torch.float64)[level]
    kw = dict(seed=seed, batch_size=batch_size, pass_sigma=True, progress=progress, desc=desc)
    group_of = {}
    groups = torch.tensor([group_of.setdefault(id(modules[k]), len(group_of))
                           for k in level.tolist()], dtype=torch.int64)
    if one_pass and one_pass_possible(modules, dual.sigmas, x.device):
        order = _probe_first(groups)
        for g in _unprobed(groups[order]):
            i = int(torch.nonzero(groups == g)[0])
            _probe_alone(modules[int(level[i])], x[i], float(sigma[i]))
        model = LevelRoutes([modules[k] for k in used], [dual.sigmas[k] for k in used])
        counts = _count_draws(model, x[order], sigma[order], ids[order],
                              [_take(d, order) for d in draws], **kw)
        counts = counts[:, torch.argsort(order).to(counts.device)]
    else:
        counts = None
        for g in range(len(group_of)):
            members = torch.nonzero(groups == g).reshape(-1)
            k = int(level[members[0]])
            c = _count_draws(modules[k], x[members], sigma[members], ids[members],
                             [_take(d, members) for d in draws], **kw)
            if counts is None:
                counts = c.new_zeros((len(draws), x.shape[0], c.shape[2]))
            elif c.shape[2] != counts.shape[2]:
                raise ValueError("all classifier experts must return the same number of "
                                 "classes")
            counts[:, members.to(counts.device)] = c.to(counts.device)
    if joint_level is None:
        return counts, None
    return split_joint(counts, num_levels)


def _take(draw: Draw, index: torch.Tensor) -> Draw:
    """The draw for the inputs ``index`` (a mask or indices; per-input counts and starts
    taken, shared ints kept)."""
    def pick(v):
        return v[index] if isinstance(v, torch.Tensor) else v
    return Draw(draw.stream, pick(draw.num_samples), pick(draw.start))
