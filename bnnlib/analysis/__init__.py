"""What a network costs and repeats: the layer trace, memory summary, energy (Section 3,
Tables 2-3) and filter repetition (Section 3.3).

* :mod:`~bnnlib.analysis.trace`: each layer's shapes and operation counts from one forward;
* :mod:`~bnnlib.analysis.summary`: parameters and memory, float32 against packed bits;
* :mod:`~bnnlib.analysis.energy`: energy per image from the paper's Tables 2 and 3;
* :mod:`~bnnlib.analysis.filters`: unique binary filters per layer;
* :mod:`~bnnlib.analysis.probes`: what each Sign activation saw and was sent back (the STE).
"""

from bnnlib.analysis import energy, filters, probes, summary, trace

__all__ = ["energy", "filters", "probes", "summary", "trace"]
