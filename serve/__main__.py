"""``python -m serve MODEL.onnx``: the service without the compression extras (see serve/cli.py)."""
import sys

from .cli import main

sys.exit(main())
