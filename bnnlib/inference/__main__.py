"""``python -m bnnlib.inference MODEL.safetensors --dataset NAME``: see :mod:`.cli`."""

from .cli import main

main()
