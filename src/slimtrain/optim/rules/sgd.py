"""SGD, with optional heavy-ball momentum, as ``torch.optim.SGD`` writes it (dampening 0, no
Nesterov): ``B ← G`` at the first step, then ``B ← μB + G``; the update is ``-lr·B``. Weight decay
is the pipeline's decoupled one (torch's SGD adds λW to the gradient instead). Its users here are
the zeroth-order recipes (``optim/zo/``: ZO-SGD-MMT feeds it the estimate ĝ·z)."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Hyper, option
from .base import Rule


@dataclass
class SGDHyper(Hyper):
    momentum: float = option(0.0, "heavy-ball momentum μ (0: plain SGD, no state)", low=0, high=1,
                             open_high=True)


class SGDRule(Rule):
    name = "sgd"
    Hyper = SGDHyper
    elementwise = True
    reprojectable = {"momentum_buffer": "first"}

    def moment_shapes(self, shape, group):
        return {"momentum_buffer": tuple(shape)} if group["momentum"] > 0 else {}

    def directions(self, grads, moments, counts, group, impl, inputs=None):
        mu = group["momentum"]
        directions = []
        for g, m, count in zip(grads, moments, counts):
            if mu > 0:
                buf = m["momentum_buffer"]
                if int(count.item()) == 0:
                    buf.copy_(g)
                else:
                    buf.mul_(mu).add_(g)
                g = buf
            directions.append(g)
            count += 1
        return directions, [1.0] * len(grads)
