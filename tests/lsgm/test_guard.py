"""The update guard's certificate: the optimizers' step bounds hold against adversarial gradients, and the guard
copies the weights only where the bound cannot prove a step within the limit."""

import math

import pytest
import torch

from lsgm.guard import UpdateGuard, update_bound

OPTIMIZERS = {
    "adamax": lambda params, betas: torch.optim.Adamax(params, lr=0.03, betas=betas, weight_decay=0.01),
    "adam": lambda params, betas: torch.optim.Adam(params, lr=0.03, betas=betas),
    "adam l2 amsgrad": lambda params, betas: torch.optim.Adam(params, lr=0.03, betas=betas, weight_decay=0.1,
                                                              amsgrad=True),
    "adamw": lambda params, betas: torch.optim.AdamW(params, lr=0.03, betas=betas, weight_decay=0.5),
    "adamw fused": lambda params, betas: torch.optim.AdamW(params, lr=0.03, betas=betas, weight_decay=0.5,
                                                           fused=True),
}


def gradient(kind: str, step: int, shape, generator) -> torch.Tensor:
    """Gradients that push the bounds: random scales over nine decades with sign flips, a constant sign (the largest
    Adam(ax) steps), and a long quiet stretch followed by a spike."""
    if kind == "constant":
        return torch.full(shape, 0.7, dtype=torch.float64)
    if kind == "quiet then spike":
        return torch.full(shape, 1e3 if step % 50 == 49 else 1e-6, dtype=torch.float64)
    scale = 10.0 ** float(torch.empty(()).uniform_(-6, 3, generator=generator))
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.5, 0.9)])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", ["random", "constant", "quiet then spike"])
def test_no_step_exceeds_the_optimizers_bound(name, betas, kind):
    if name == "adamw fused" and tuple(int(v) for v in torch.__version__.split(".")[:2]) < (2, 4):
        pytest.skip("fused AdamW on a CPU needs torch 2.4")
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64))
              for shape in ((6, 5), (11,))]
    optimizer = OPTIMIZERS[name](params, betas)
    tightest = 0.0
    for step in range(200):
        for p in params:
            p.grad = gradient(kind, step, p.shape, generator)
        a, c = update_bound(optimizer)
        before = [p.detach().clone() for p in params]
        size = math.sqrt(sum(float(b.pow(2).sum()) for b in before))
        optimizer.step()
        change = math.sqrt(sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(params, before)))
        assert change <= (a + c * size) * (1 + 1e-9), (step, change, a, c)
        tightest = max(tightest, change / (a + c * size))
    if kind == "constant":  # the bound is no empty promise: a constant gradient comes near it (Adamax 0.89+, Adam 1/7)
        assert tightest > (0.85 if name == "adamax" else 0.1), tightest


def test_the_bound_is_unknown_where_it_does_not_hold_or_cannot_be_read():
    w = torch.nn.Parameter(torch.ones(3))
    assert update_bound(torch.optim.SGD([w], lr=0.1)) is None
    assert update_bound(torch.optim.Adamax([w], betas=(0.99, 0.9))) is None  # β1 ≥ β2: u no longer bounds m
    assert update_bound(torch.optim.Adam([w], betas=(0.9, 0.5))) is None  # β1² ≥ β2
    a, c = update_bound(torch.optim.Adam([w], lr=0.1))
    assert a == pytest.approx(0.1 * math.sqrt(3) * math.sqrt(1 / (1 - 0.81 / 0.999))) and c == 0.0  # t = 1


def test_the_guard_copies_only_what_it_cannot_prove(monkeypatch):
    generator = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randn(50, generator=generator))
    w.grad = torch.randn(50, generator=generator)
    # small steps against the weights' norm: proved within a limit of 1, no copy, kept
    optimizer = torch.optim.Adamax([w], lr=1e-3)
    with UpdateGuard([w], 1.0, optimizer) as guard:
        optimizer.step()
        assert guard.certified and guard.before is None and not guard.exceeded()
    # an exploding learning rate: not provable, copied, found too large and undone to the bit
    start = w.detach().clone()
    optimizer = torch.optim.Adamax([w], lr=1e6)
    with UpdateGuard([w], 1.0, optimizer) as guard:
        optimizer.step()
        assert not guard.certified and guard.exceeded()
        guard.undo()
    assert torch.equal(w.detach(), start)
    # an optimizer without a bound is checked the exact way; no limit, no work
    optimizer = torch.optim.SGD([w], lr=1e-3)
    with UpdateGuard([w], 1.0, optimizer) as guard:
        optimizer.step()
        assert not guard.certified and guard.before is not None and not guard.exceeded()
    with UpdateGuard([w], None, optimizer) as guard:
        optimizer.step()
        assert guard.before is None and not guard.exceeded()


def test_the_guard_carries_a_lower_bound_of_the_norm_until_the_weights_are_written():
    """Across steps of one optimizer the guard measures ‖θ‖ only when its carried floor cannot prove a step, the floor
    stays below the true norm, any other in-place write of the weights makes it measure again, and a step that the
    floor cannot prove is still checked and undone."""
    generator = torch.Generator().manual_seed(2)
    w = torch.nn.Parameter(torch.randn(400, generator=generator, dtype=torch.float64))
    optimizer = torch.optim.Adamax([w], lr=3e-2)
    guard = UpdateGuard([w], 0.1, optimizer)
    certified = 0
    for step in range(60):
        w.grad = gradient("constant" if step < 30 else "random", step, w.shape, generator)
        with guard:
            optimizer.step()
            certified += guard.certified
            assert not guard.exceeded()
        assert guard.floor is None or guard.floor <= float(w.detach().norm())
    # ‖θ‖ ≈ 20 and a ≈ 20 · 0.03 · 1.01 = 0.6 once the bias correction has faded: the first steps cannot be proved
    # (a/(1 − β1^t) > 0.1‖θ‖ until t = 4), then a floor measured at ~20 proves steps until it falls to ~a/r = 6
    assert 50 <= certified <= 57 and 2 <= guard.norms_taken <= certified / 4
    taken = guard.norms_taken
    with torch.no_grad():
        w.mul_(0.5)  # another writer (a checkpoint's load, an EMA swap): the floor no longer holds
    with guard:
        optimizer.step()
    assert guard.norms_taken == taken + 1 and guard.floor <= float(w.detach().norm())
    optimizer.param_groups[0]["lr"] = 10.0  # explodes: not provable from the floor nor the norm, checked, undone
    start = w.detach().clone()
    with guard:
        optimizer.step()
        assert not guard.certified and guard.exceeded()
        guard.undo()
    assert torch.equal(w.detach(), start) and guard.floor is None


@pytest.mark.parametrize("kind", ["adamax", "adamw"])
def test_the_bound_takes_each_weights_own_step_count(kind):
    """A weight without gradients on some steps is behind the others: its bias correction is the larger one (or,
    for Adam, another), so the bound sums each tensor's weights at its own count, not the first tensor's."""
    ahead, behind = torch.nn.Parameter(torch.ones(100)), torch.nn.Parameter(torch.ones(30))
    optimizer = OPTIMIZERS[kind]([ahead, behind], (0.9, 0.999))
    for _ in range(50):
        ahead.grad, behind.grad = torch.ones(100), None
        optimizer.step()
    behind.grad = torch.ones(30)
    optimizer.step()  # ahead at step 51, behind at step 1; the next step takes 52 and 2
    lr, beta1, beta2 = 0.03, 0.9, 0.999
    if kind == "adamax":
        def per_weight(t):
            return lr / (1 - beta1**t) * (1 - beta1) / (1 - beta1 / beta2)
    else:
        def per_weight(t):
            return lr * (1 - beta1) / (1 - beta1**t) * math.sqrt((1 - beta2**t) / ((1 - beta2)
                                                                                 * (1 - beta1**2 / beta2)))
    a, _ = update_bound(optimizer)
    assert a == pytest.approx(math.sqrt(100 * per_weight(52) ** 2 + 30 * per_weight(2) ** 2), rel=1e-12)
    first_count_only = math.sqrt(130) * per_weight(52)  # what the first tensor's count alone would have given
    assert a > (1.5 if kind == "adamax" else 1.005) * first_count_only


def test_the_carried_floor_follows_decoupled_decay_and_is_dropped_on_an_error():
    """AdamW's decay shrinks the weights by lr·λ a step on top of the gradient's move: the carried floor (1 − c)L − a
    stays below the true norm while the norm falls by a third; an error inside the guarded block drops it."""
    generator = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.randn(400, generator=generator, dtype=torch.float64))
    optimizer = torch.optim.AdamW([w], lr=1e-2, weight_decay=10.0)  # c = 0.1
    guard = UpdateGuard([w], 0.5, optimizer)
    start, carried = float(w.detach().norm()), 0
    for step in range(10):
        w.grad = gradient("random", step, w.shape, generator)
        with guard:
            optimizer.step()
            assert not guard.exceeded()
        carried += guard.floor is not None
        assert guard.floor is None or guard.floor <= float(w.detach().norm())
    assert float(w.detach().norm()) < 0.7 * start and carried >= 5
    with pytest.raises(RuntimeError, match="interrupted"), guard:
        raise RuntimeError("interrupted")
    assert guard.floor is None
