"""The paper's ideas as PyTorch modules: torch only, nothing else.

* :mod:`~bnnlib.nn.binarize`: deterministic and stochastic Sign (Section 1.1);
* :mod:`~bnnlib.nn.ste`: the straight-through estimator with gradient cancellation (1.3);
* :mod:`~bnnlib.nn.shift`: shift-based batch normalization and AP2 (1.4, Algorithm 3);
* :mod:`~bnnlib.nn.layers`: binary layers with clipped real-valued latent weights (1.2, 1.3);
* :mod:`~bnnlib.nn.optim`: Adam, shift-based AdaMax (Algorithm 4), the LR schedules;
* :mod:`~bnnlib.nn.losses`: the square hinge loss;
* :mod:`~bnnlib.nn.models`: the paper's MLP and ConvNets (Section 2).
"""

from bnnlib.nn import binarize, layers, losses, models, optim, shift, ste

__all__ = ["binarize", "layers", "losses", "models", "optim", "shift", "ste"]
