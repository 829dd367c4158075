"""Runs made into committed results, and the paper's GPU schedule.

* :mod:`~bnnlib.repro.publish`: ``python -m bnnlib.repro.publish RUN DEST`` packs a finished
  run into ``results/`` (history, run.json, packed model), checking packed = float;
* :mod:`~bnnlib.repro.reproduce`: ``python -m bnnlib.repro.reproduce`` runs the paper's MNIST
  schedule and the CIFAR-10 ConvNet under a wall-clock guard.
"""
