"""Benchmarks (``python -m bnnlib.bench``): the run-time claims of the paper's Section 4 measured
on this machine, every ratio from one run, medians after warm-up, the machine recorded.

* :mod:`~bnnlib.bench.cli`: the command line and the sections it runs;
* :mod:`~bnnlib.bench.kernels`: XNOR-popcount gemm vs float32 BLAS (CPU), the GPU kernels;
* :mod:`~bnnlib.bench.mlp`: the packed MNIST MLP and the training step;
* :mod:`~bnnlib.bench.latency`: packed inference per image against the weight-streaming floor;
* :mod:`~bnnlib.bench.gpu`: the MLP on the GPU kernels; :mod:`~bnnlib.bench.report`: tables;
* :mod:`~bnnlib.bench.common`: the machine, the models, the deployed float32 baseline;
* :mod:`~bnnlib.bench.timing`: median of repeats, device synchronized.
"""
