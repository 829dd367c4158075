"""``python -m bnnlib.inference MODEL.safetensors --dataset NAME``: see :mod:`.cli`."""

from bnnlib.inference.cli import main

main()
