"""What a network costs and repeats: the layer trace, memory summary, energy (Section 3,
Tables 2-3) and filter repetition (Section 3.3).

* :mod:`~bnnlib.analysis.trace`: each layer's shapes and operation counts from one forward;
* :mod:`~bnnlib.analysis.summary`: parameters and memory, float32 against packed bits;
* :mod:`~bnnlib.analysis.energy`: energy per image from the paper's Tables 2 and 3;
* :mod:`~bnnlib.analysis.filters`: unique binary filters per layer.
"""

from bnnlib.analysis import energy, filters, summary, trace

__all__ = ["energy", "filters", "summary", "trace"]
