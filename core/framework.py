"""Keras and TensorFlow, loaded without the libraries they would load for nothing.

As it loads, Keras imports pandas (its data adapters), scikit-learn (its
wrappers) and, through TensorFlow's own old Keras, SciPy, whenever they are
installed: Ray Data brings pandas, the tests scikit-learn. lookalike hands
Keras NumPy arrays only, so loading them is start-up time spent for nothing.
They are hidden while Keras and TensorFlow load, which then go without them,
and importable again afterwards, for Ray Data and anything else that wants
them. One already loaded is left alone.
"""
from __future__ import annotations

import os
import sys

# Read by TensorFlow as it loads: its C++ log at errors only (`daemon.tensorflow_log`).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

UNUSED = ("pandas", "sklearn", "scipy")

hidden = [name for name in UNUSED if name not in sys.modules]
for name in hidden:
    sys.modules[name] = None  # type: ignore[assignment]  # `import` then raises ImportError
try:
    import keras as keras  # (`as`: re-exported, `from .framework import keras`)
    import tensorflow as tf
finally:
    for name in hidden:
        if sys.modules.get(name, ...) is None:
            del sys.modules[name]

__all__ = ["keras", "tf"]
