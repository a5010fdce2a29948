"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018; docs/science.md §3).

Two gradient norms taken at the same parameters, at batch sizes b < B, give unbiased
estimates of |G|^2 (the true gradient's squared norm) and tr(Sigma) (the per-example gradient
covariance's trace):

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

Each is unbiased, their ratio is not, and single estimates are very noisy: keep separate
exponential moving averages of the two and divide the averages. :func:`two_batch_estimates` is
the pure estimator; :class:`NoiseScaleEMA` the averaging; :class:`GradientNoiseScale` the hook
of the supervised loop (``TrialConfig.noise_scale``), which splits each batch in two halves
(b = B/2) and accumulates their gradients so that the optimizer sees the full-batch mean
gradient: the only extra cost is one copy of the gradient and two smaller backward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from trainables.microbatch import backward_mean, batch_len, slice_batch

Num = Any  # float, numpy array or torch tensor


def two_batch_estimates(gsq_small: Num, gsq_big: Num, b: float, big_b: float) -> tuple[Num, Num]:
    """(|G|^2, tr(Sigma)) estimates from |G_b|^2 at batch size b and |G_B|^2 at B > b.

    Plain arithmetic: floats, numpy arrays or torch tensors (kept on their device).
    """
    if not 0 < b < big_b:
        raise ValueError(f"need 0 < b < B, got b={b}, B={big_b}")
    gsq = (big_b * gsq_big - b * gsq_small) / (big_b - b)
    trsigma = (gsq_small - gsq_big) / (1.0 / b - 1.0 / big_b)
    return gsq, trsigma


class NoiseScaleEMA:
    """Bias-corrected EMAs of the |G|^2 and tr(Sigma) estimates; B_simple = their ratio.

    ``beta``: per update (per optimizer step); 0.99 averages over about 100 steps. Updates
    may be floats or 0-d tensors (then the EMAs stay on the device until :meth:`metrics`).
    """

    def __init__(self, beta: float = 0.99):
        self.beta = beta
        self.gsq = 0.0
        self.trsigma = 0.0
        self.n = 0

    def update(self, gsq: Num, trsigma: Num) -> None:
        self.gsq = self.beta * self.gsq + (1 - self.beta) * gsq
        self.trsigma = self.beta * self.trsigma + (1 - self.beta) * trsigma
        self.n += 1

    def metrics(self) -> dict[str, float]:
        """``noise_scale_gsq``, ``noise_scale_trsigma``, ``noise_scale_bsimple`` (nan before data).

        B_simple is inf while the averaged |G|^2 estimate is <= 0 (noise swamps the gradient).
        """
        if self.n == 0:
            return {
                "noise_scale_gsq": math.nan,
                "noise_scale_trsigma": math.nan,
                "noise_scale_bsimple": math.nan,
            }
        corr = 1 - self.beta**self.n
        gsq, tr = float(self.gsq) / corr, float(self.trsigma) / corr
        return {
            "noise_scale_gsq": gsq,
            "noise_scale_trsigma": tr,
            "noise_scale_bsimple": tr / gsq if gsq > 0 else math.inf,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "beta": self.beta,
            "gsq": float(self.gsq),
            "trsigma": float(self.trsigma),
            "n": self.n,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.beta, self.gsq, self.trsigma, self.n = s["beta"], s["gsq"], s["trsigma"], s["n"]


class GradientNoiseScale:
    """Loop hook: ``backward(model, loss_fn, batch) -> loss`` replaces ``loss.backward()``.

    ``loss_fn(model, batch)`` must be the mean loss over the batch. The batch is split into
    halves of b1 = B // 2 and b2 = B - b1 examples; each half's loss is scaled by b_j / B before
    its backward, so the accumulated ``.grad`` is the full-batch mean gradient G_B, exactly as
    without the hook. The first half's gradient G_b1 is copied before the second backward;
    G_b2 = (B G_B - b1 G_b1) / b2. Both halves give an estimate pair; their mean is averaged.
    Batches of one example fall back to a plain backward (no estimate). ``micro_batch_size``
    runs each half in parts (:func:`trainables.microbatch.backward_mean`); b stays B/2.
    """

    def __init__(self, beta: float = 0.99):
        self.ema = NoiseScaleEMA(beta)

    def backward(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        batch: Any,
        micro_batch_size: int = 0,
    ) -> torch.Tensor:
        big_b = batch_len(batch)
        if big_b < 2:
            return backward_mean(model, loss_fn, batch, micro_batch_size)
        b1 = big_b // 2
        b2 = big_b - b1
        params = [p for p in model.parameters() if p.requires_grad]
        loss1 = backward_mean(
            model, loss_fn, slice_batch(batch, 0, b1), micro_batch_size, b1 / big_b
        )
        g1 = [
            p.grad.detach().clone() * (big_b / b1) if p.grad is not None else None for p in params
        ]
        loss2 = backward_mean(
            model, loss_fn, slice_batch(batch, b1, big_b), micro_batch_size, b2 / big_b
        )
        with torch.no_grad():
            parts1, parts2, parts_big = [], [], []
            for p, g in zip(params, g1, strict=True):
                if p.grad is None:
                    continue
                gb1 = torch.zeros_like(p.grad) if g is None else g
                gb2 = (p.grad * big_b - gb1 * b1) / b2
                parts1.append(gb1.square().sum())
                parts2.append(gb2.square().sum())
                parts_big.append(p.grad.square().sum())
            if parts_big:  # tensors on the device: no host sync until metrics() is read
                sq_b1, sq_b2 = torch.stack(parts1).sum(), torch.stack(parts2).sum()
                sq_big = torch.stack(parts_big).sum()
                e1 = two_batch_estimates(sq_b1, sq_big, b1, big_b)
                e2 = two_batch_estimates(sq_b2, sq_big, b2, big_b)
                self.ema.update((e1[0] + e2[0]) / 2, (e1[1] + e2[1]) / 2)
        return ((loss1.detach() * b1 + loss2.detach() * b2) / big_b).detach()

    def metrics(self) -> dict[str, float]:
        return self.ema.metrics()

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict()

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.ema.load_state_dict(s)
