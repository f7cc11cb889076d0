"""Importance criteria: which channels and weights matter least.

Every criterion is a :class:`Criterion` registered in :data:`CRITERIA`. It scores

* channels: :meth:`Criterion.channel_scores` takes a Torch-Pruning group over all
  current channels and returns one score per channel (higher = more important),
  normalised so that its mean is 1 (comparable across groups for global
  allocation);
* weights: :meth:`Criterion.weight_scores` returns a tensor shaped like a
  module's weight (used for ``unstructured`` and ``nm``).

Data-driven criteria (``needs_data = True``) first collect statistics in
:meth:`Criterion.prepare` from a few ``(x, y)`` batches; the model is run in eval
mode so BatchNorm statistics are not changed. Contract: ``prepare`` leaves the
model's parameters and buffers untouched and its gradients cleared.

Implemented:
    ``l1``, ``l2``: weight magnitude (Torch-Pruning ``GroupMagnitudeImportance``).
    ``taylor``: first-order Taylor (Molchanov et al., 2019): channels via
        ``GroupTaylorImportance`` on the summed gradient; weights ``Σ_b (w·g_b)²``.
    ``fpgm``: geometric-median distance of filters (``FPGMImportance``); weights
        ``|w|`` times their filter's normalised FPGM score.
    ``bn-scale``: network slimming, ``|γ|`` of the BatchNorm after a member
        (``BNScaleImportance``); weights ``|w| · |γ|`` of their output channel.
    ``obd``: Optimal-Brain-Damage saliency ``½ F w²`` with a diagonal empirical
        Fisher ``F = mean_b g_b²`` (batch gradients) as the Hessian approximation.
    ``snip``: connection sensitivity ``|w · ḡ|`` (Lee et al., 2019).
    ``lrp``: ε-rule layer-wise relevance (Yeom et al., "Pruning by explaining",
        2021), starting from the true-class logit. Implemented exactly by the
        gradient trick: the gradient arriving at each Conv/Linear/BatchNorm/
        AvgPool output ``z`` is multiplied by ``z / (z + ε·sign z)`` with
        ``ε = 0.25·std(z)``; then ``x ⊙ ∂/∂x`` is the ε-LRP relevance of every
        tensor and ``w ⊙ ∂/∂w`` that of every weight. ReLU and max-pool pass
        relevance as the gradient does; functional adds and concatenations use
        the ε = 0 (proportional) rule. Channel relevance is the summed relevance
        of the channel's weights; scores are ``|relevance|``.
    ``random``: a seeded control.

Channel scores of the criteria without a Torch-Pruning class (``obd``, ``snip``,
``lrp``) sum each member's per-weight scores over one output channel and average
over the group's members.
"""

from autoprune.pruning.criteria.base import CRITERIA, Criterion, get_criterion
from autoprune.pruning.criteria.gradient import LRP, OBD, SNIP, Taylor
from autoprune.pruning.criteria.magnitude import FPGM, L1, L2, BNScale, Random, following_bn

__all__ = ["CRITERIA", "FPGM", "L1", "L2", "LRP", "OBD", "SNIP", "BNScale", "Criterion", "Random", "Taylor",
           "following_bn", "get_criterion"]
