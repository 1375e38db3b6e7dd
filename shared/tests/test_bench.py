"""shared/bench.py: the FLOP count that benchmarks divide by the measured peak."""
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from shared.bench import count_flops


def test_count_flops_matches_hand_count_and_torch_counter():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=False)
    x = torch.randn(4, 16)
    assert count_flops(lambda: layer(x)) == 2 * 4 * 16 * 8  # one (4x16)@(16x8) matmul, multiply-add = 2
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))
    images = torch.randn(2, 3, 8, 8)

    def step() -> None:
        net(images).sum().backward()

    with FlopCounterMode(display=False) as torch_counter:
        step()
    assert count_flops(step) == torch_counter.get_total_flops() > 0


def test_count_flops_goes_through_a_double_backward():
    """The gradient penalty calls autograd.grad inside the counted step; torch's module-tracking counter
    raises there, this one counts it: the penalty's step costs more than the plain backward."""
    net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(4, 16, requires_grad=True)

    def plain() -> None:
        net(x).sum().backward()

    def penalty() -> None:
        (grad,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        ((grad.norm(dim=1) - 1) ** 2).mean().backward()

    assert count_flops(penalty) > count_flops(plain) > 0
