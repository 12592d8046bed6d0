"""The encoder in TensorFlow Lite's form: the same vectors for about half the CPU.

TensorFlow runs the encoder's graph op by op, each through its own kernel;
TensorFlow Lite's XNNPACK delegate runs the same layers, fused, with kernels
made for a CPU's vector unit. `convert` makes a model's Lite form from its
traced function (seconds for a large encoder); `Runner` runs it. The
encoder (`core.encoder`) uses the Lite form once it agrees with TensorFlow on
a probe batch (`agrees`), and keeps it under its model's id and
TensorFlow's version (`kept`), so that a later start reads it rather than
convert again.
"""
from __future__ import annotations

import logging
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from .atomic import replacing
from .framework import tf

log = logging.getLogger(__name__)

# How far the Lite form's vectors may stray from TensorFlow's, as a share of their
# largest value: fused kernels add in another order, nothing more.
TOLERANCE = 1e-3


def convert(function: tf.types.experimental.PolymorphicFunction) -> bytes:
    """The Lite form (a flatbuffer) of an encoder's `tf.function` of one input signature,
    float32 throughout. (The function, not the Keras model, must be the converter's
    `trackable_obj`: with the model, the converted weights come out as NaN.)"""
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function)
    return bytes(converter.convert())


class Runner:
    """A Lite form, run on `threads` threads. One batch at a time: TensorFlow Lite's
    interpreter is not for several threads at once."""

    def __init__(self, flat: bytes, threads: int = 1) -> None:
        self.flat = flat
        with warnings.catch_warnings():  # tf.lite's notice of the LiteRT package to come
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=flat, num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 0  # the batch size the interpreter is set up for
        self.lock = threading.Lock()

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """The vectors (n, latent) of a batch of images (n, size, size, channels) uint8."""
        with self.lock:
            if len(pixels) != self.batch:  # a new size: tensors laid out again (microseconds)
                self.interpreter.resize_tensor_input(self.input, pixels.shape)
                self.interpreter.allocate_tensors()
                self.batch = len(pixels)
            self.interpreter.set_tensor(self.input, np.ascontiguousarray(pixels))
            self.interpreter.invoke()
            return self.interpreter.get_tensor(self.output).copy()


def agrees(runner: Runner, function: tf.types.experimental.PolymorphicFunction,
           probe: np.ndarray) -> bool:
    """Whether the Lite form gives TensorFlow's vectors for `probe` images."""
    theirs = function(tf.constant(probe)).numpy()
    ours = runner.run(probe)
    scale = max(float(np.abs(theirs).max()), 1e-6)
    return ours.shape == theirs.shape and bool(np.abs(ours - theirs).max() <= TOLERANCE * scale)


def file_name(model_id: str) -> str:
    """The file that keeps the Lite form of the model `model_id`, as this TensorFlow
    converts it: another version converts again rather than trust an older form."""
    return f"{model_id}.tf{tf.__version__}.tflite"


def kept(folder: Path, model_id: str) -> bytes | None:
    """The Lite form kept in `folder` for the model `model_id`, if any."""
    try:
        return (folder / file_name(model_id)).read_bytes()
    except OSError:
        return None


def keep(folder: Path, model_id: str, flat: bytes) -> None:
    """Keep a Lite form for later starts; a folder that cannot take it only costs a
    conversion at each start."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with replacing(folder / file_name(model_id)) as partial:
            partial.write_bytes(flat)
    except OSError as error:
        log.debug("cannot keep the encoder's Lite form in %s: %s", folder, error)
    else:
        for other in folder.glob("*.tflite"):  # an earlier model's or TensorFlow's
            if other.name != file_name(model_id):
                other.unlink(missing_ok=True)


def threads() -> int:
    """The threads a Lite form runs on: this process's cores."""
    return max(1, len(os.sched_getaffinity(0)))
