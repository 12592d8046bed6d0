"""The `lookalike` command.

Commands that need no model (`--help`, `check-config`, `status`, `duplicates`,
`rebuild`) never import TensorFlow, so they answer at once. A user's mistake ends in
one line on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lookalike.core import config as configuration
from lookalike.core import index
from lookalike.core.config import Config
from lookalike.core.errors import ConfigError, LookalikeError
from lookalike.core.store import Library
from lookalike.daemon import tensorflow_log
from lookalike.daemon.logs import setup_logging

if TYPE_CHECKING:
    import numpy as np

    from lookalike.core.encoder import Encoder
    from lookalike.core.images import Shape

log = logging.getLogger("lookalike")

EXIT_FAILURE, EXIT_USAGE = 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except ConfigError as error:
        for problem in error.problems:
            print(f"lookalike: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except LookalikeError as error:
        print(f"lookalike: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lookalike", description="Find look-alike images in a watched folder.")
    top.add_argument("-v", "--verbose", action="store_true", help="log every file (debug level)")
    commands = top.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[argparse.Namespace], int], text: str,
                config: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(command=run)
        if config:
            sub.add_argument("-c", "--config", type=Path, default=default_config(),
                             help="config file (default: $LOOKALIKE_CONFIG or ./config.yaml)")
        return sub

    command("check-config", check_config, "validate the config file and exit")
    run_parser = command("run", run, "watch the inbox and answer every image (the service)")
    run_parser.add_argument("--once", action="store_true",
                            help="scan, ingest, index and answer once, then exit")
    import_parser = command("import", import_images,
                            "encode the inbox's new and changed images on a Ray cluster into "
                            "the library (needs lookalike[cluster])")
    import_parser.add_argument("folders", type=Path, nargs="*", metavar="FOLDER",
                               help="only the images under these folders of the inbox")
    import_parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                               help="the Ray cluster to use (default: start one on this "
                                    "machine's cores)")
    query_parser = command("query", query, "print the neighbours of one image as JSON")
    query_parser.add_argument("image", type=Path)
    query_parser.add_argument("-k", type=positive, default=None, help="how many neighbours")
    sheet_parser = command("sheet", sheet,
                           "draw one image and its neighbours in rank order as a PNG")
    sheet_parser.add_argument("image", type=Path)
    sheet_parser.add_argument("-o", "--out", type=Path, default=None,
                              help="picture to write (default: ./IMAGE.sheet.png)")
    sheet_parser.add_argument("-k", type=positive, default=None, help="how many neighbours")
    status_parser = command("status", status, "show the library, the index and the model")
    status_parser.add_argument("--json", action="store_true", help="print JSON")
    command("rebuild", rebuild, "build a new index of the library now")
    duplicates_parser = command("duplicates", duplicates,
                                "list every group of near-duplicates in the library")
    duplicates_parser.add_argument("--json", action="store_true",
                                   help="one JSON object a line, a group each")
    duplicates_parser.add_argument("--sheet", type=Path, default=None, metavar="FILE.png",
                                   help="also draw the groups, one row each")
    eval_parser = command("eval", evaluate,
                          "measure retrieval quality on a labelled folder (sub-folder = label)")
    eval_parser.add_argument("--data", type=Path, required=True, help="one sub-folder per label")
    eval_parser.add_argument("--model", type=Path, default=None,
                             help="encoder to measure (default: the configured one)")
    eval_parser.add_argument("-k", type=positive, default=12, help="neighbours per query")
    eval_parser.add_argument("--baseline", choices=("pixels",), default=None,
                             help="measure raw grayscale pixels instead of an encoder")
    eval_parser.add_argument("--copies", action="store_true",
                             help="each sub-folder holds copies of one picture: measure copy "
                                  "detection (first neighbour, recall@k; by kind when file "
                                  "names repeat across sub-folders, e.g. crop60.jpg)")
    eval_parser.add_argument("--json", action="store_true", help="print JSON")
    eval_parser.add_argument("--sheet", type=Path, default=None, metavar="FILE.png",
                             help="also draw random queries and their neighbours, "
                                  "other labels framed red")
    eval_parser.add_argument("--sheet-rows", type=positive, default=6,
                             help="queries on the sheet (default: 6)")
    train_parser = command("train", train, "train an encoder on a folder of images", config=False)
    train_parser.add_argument("--data", type=Path, required=True,
                              help="folder of images (recursive)")
    train_parser.add_argument("--out", type=Path, required=True,
                              help="encoder file to write (.keras)")
    train_parser.add_argument("--preset", default="lookalike",
                              help="training recipe: lookalike (the default, measured in "
                                   "BENCHMARKS.md) or seed (the article's)")
    train_parser.add_argument("--color", choices=("rgb", "grayscale"), default=None,
                              help="colour mode of the encoder's input (default: the "
                                   "recipe's, rgb)")
    train_parser.add_argument("--size", type=positive, default=56, help="input side in pixels")
    train_parser.add_argument("--latent", type=positive, default=128,
                              help="size of the learned latent (the default recipe adds "
                                   "edge directions beside it)")
    train_parser.add_argument("--start", default=None, metavar="FILE.keras|scratch",
                              help="go on training from this encoder's training state, or "
                                   "from random weights (default: the shipped encoder, when "
                                   "it has the same recipe, size and latent; else scratch)")
    train_parser.add_argument("--epochs", type=positive, default=None,
                              help="at most this many epochs (default: 10 going on from an "
                                   "encoder, 20 from scratch)")
    train_parser.add_argument("--batch-size", type=positive, default=64)
    train_parser.add_argument("--patience", type=positive, default=5,
                              help="stop after this many epochs without a better held-out loss")
    train_parser.add_argument("--seed", type=int, default=0)
    return top


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def default_config() -> Path:
    return Path(os.environ.get("LOOKALIKE_CONFIG", "config.yaml"))


def load_config(args: argparse.Namespace) -> Config:
    config = configuration.load(args.config)
    if not args.verbose:
        logging.getLogger().setLevel(config.log_level.upper())
    return config


def open_library(config: Config) -> Library:
    return Library(config.state_dir / "library.sqlite")


def load_encoder(config: Config) -> Encoder:
    """The configured encoder; its shape must agree with `image.size` and `image.color`."""
    started = time.monotonic()
    tensorflow_log.quiet()
    from lookalike.core import encoder as encoders  # TensorFlow loads here, only when encoding

    encoder = encoders.load(config.model, config.image.max_pixels, config.state_dir / "lite")
    configuration.check_encoder(config, encoder.shape.size, encoder.shape.color)
    side = encoder.shape.size
    log.info("encoder %s (%dx%d %s -> %d) loaded in %.1f s", config.model.name, side, side,
             encoder.shape.color, encoder.latent_dim, time.monotonic() - started)
    # TensorFlow leaves some 330,000 objects that every full garbage collection would
    # walk again (0.19 s each, several per thousand images ingested): set them aside.
    gc.collect()
    gc.freeze()
    return encoder


class EncoderWhenNeeded:
    """The configured encoder, loaded (TensorFlow with it, 5 to 7 s) only when a first
    image is to be encoded: a `run --once` that finds nothing new to read (after
    `lookalike import`, a move, an unchanged inbox) never loads it. What the pass needs
    before, the encoder's input and id, its file says without TensorFlow (`card`)."""

    def __init__(self, config: Config, shape: Shape) -> None:
        from lookalike.core import card

        self.config = config
        self.shape = shape
        self.model_id = card.model_id(config.model)
        self.loaded: Encoder | None = None
        self.loading = threading.Lock()

    def encode(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.load().encode(pixels, batch_size)

    def warm(self) -> None:
        """Load and trace the encoder now: images are on their way."""
        self.load().warm()

    def load(self) -> Encoder:
        with self.loading:
            if self.loaded is None:
                self.loaded = load_encoder(self.config)
                if self.loaded.model_id != self.model_id:
                    raise ConfigError([f"the encoder {self.config.model} changed during the run"])
            return self.loaded


def encoder_when_needed(config: Config) -> Encoder:
    """`EncoderWhenNeeded`, or the encoder loaded now when its file does not say its input
    (or is missing: then loading says what is wrong)."""
    from lookalike.core import card

    shape = card.declared_shape(config)
    if shape is None:
        return load_encoder(config)
    # (Ingest and answers use only `shape`, `model_id`, `encode` and `warm`.)
    return cast("Encoder", EncoderWhenNeeded(config, shape))


# -- commands ---------------------------------------------------------------
def check_config(args: argparse.Namespace) -> int:
    config = configuration.load(args.config)
    print(f"{args.config}: ok: {config.summary()}")
    return 0


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if args.once:
        from lookalike.daemon import once
        return once.run(config, encoder_when_needed)
    from lookalike.daemon import service
    return service.run(config, load_encoder)


def import_images(args: argparse.Namespace) -> int:
    config = load_config(args)
    try:
        import ray  # noqa: F401
    except ImportError:
        raise LookalikeError("lookalike import needs Ray: pip install 'lookalike[cluster]'") \
            from None
    from lookalike.daemon import importing
    return importing.run(config, args.folders, args.ray_address, args.verbose)


def query(args: argparse.Namespace) -> int:
    document = neighbors_of(load_config(args), args.image, args.k)
    print(json.dumps(document, indent=2, ensure_ascii=False))
    return 0 if document["status"] == "ok" else EXIT_FAILURE


def sheet(args: argparse.Namespace) -> int:
    from lookalike.daemon import sheets

    config = load_config(args)
    out = sheets.target(args.image, args.out)
    document = neighbors_of(config, args.image, args.k)
    return sheets.run(config, args.image, document, out)


def neighbors_of(config: Config, image: Path, k: int | None) -> dict[str, Any]:
    """The results document of any image file among the library (the image is not added).

    An image of the inbox is never its own neighbour.
    """
    if k:
        config = dataclasses.replace(config, neighbors=k)
    if not image.exists():
        raise LookalikeError(f"{image}: no such file")
    encoder = load_encoder(config)
    from lookalike.daemon.answers import Answers
    from lookalike.daemon.searching import open_searcher

    with open_library(config) as library:  # (one query: no pool of searching threads)
        searcher = open_searcher(config, library, index.load(config.state_dir))
        resolved = image.resolve()
        inside = resolved.is_relative_to(config.inbox)
        name = resolved.relative_to(config.inbox).as_posix() if inside else str(image)
        own = library.lookup([name]).get(name) if inside else None
        answers = Answers(config, library, encoder)
        document = answers.query(image, name, searcher, exclude=own.id if own else None)
        answers.close()
    return document


def status(args: argparse.Namespace) -> int:
    config = load_config(args)
    report = status_report(config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    library, built, service = report["library"], report["index"], report["service"]
    print(f"library   {library['images']} images ({library['errors']} unusable), "
          f"generation {library['generation']}")
    if built:
        print(f"index     generation {built['generation']}: {built['items']} items, "
              f"built {built['built_at']} in {built['seconds']} s; {report['pending']} pending")
    else:
        print(f"index     none built yet; {report['pending']} pending")
    print(f"model     {config.model} ({report['model']['id'][:19]}…)")
    stale = {m: n for m, n in report["model"]["library"].items() if m != report["model"]["id"]}
    if stale:
        print(f"          {sum(stale.values())} vectors from another model await re-encoding")
    if service:
        folders = ", ".join(f"{root} {state}{watched_how(service, root)}"
                            for root, state in service["folders"].items())
        print(f"service   running (pid {service['pid']}) since {service['started_at']}: "
              f"{service['queue']} queued, {folders}")
    else:
        print("service   not running")
    return 0


def watched_how(service: dict[str, Any], root: str) -> str:
    """" (polled every 30 s, nfs4)" or " (events, ext4)": how the service watches `root`."""
    how = service.get("watch", {}).get(root)
    if not how:
        return ""
    mode = f"polled every {how['poll_interval_s']:g} s" if how["mode"] == "poll" else "events"
    return f" ({mode}, {how['file_system']})"


def status_report(config: Config) -> dict[str, Any]:
    from lookalike.core.card import model_id

    with open_library(config) as library:
        built = index.current_info(config.state_dir)
        return {
            "library": {**library.counts(), "generation": library.generation},
            "index": built.__dict__ if built else None,
            "pending": library.pending(built.generation if built else 0),
            "model": {"path": str(config.model), "id": model_id(config.model),
                      "library": library.model_ids()},
            "service": running_service(config.state_dir),
        }


def running_service(state_dir: Path) -> dict[str, Any] | None:
    """What the running service last reported, or None when none holds the state lock."""
    from lookalike.daemon.lock import StateLock
    from lookalike.daemon.status import status_path

    try:
        StateLock(state_dir).release()
        return None  # we could take the lock: nobody is running
    except LookalikeError:
        pass
    try:
        report: dict[str, Any] = json.loads(status_path(state_dir).read_text())
        return report
    except (OSError, ValueError):
        return None


def duplicates(args: argparse.Namespace) -> int:
    from lookalike.daemon import duplicates as copies

    return copies.run(load_config(args), args.json, args.sheet)


def rebuild(args: argparse.Namespace) -> int:
    from lookalike.core.card import model_id
    from lookalike.daemon.builder import BuildSettings, build_now
    from lookalike.daemon.lock import StateLock

    config = load_config(args)
    with StateLock(config.state_dir), open_library(config) as library:
        info = build_now(library, BuildSettings.of(config, model_id(config.model)))
    print(f"index generation {info.generation}: {info.items} items ({info.kind}) "
          f"in {info.seconds} s")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from lookalike.daemon import evaluation
    return evaluation.run(args)


def train(args: argparse.Namespace) -> int:
    from lookalike.daemon import training
    return training.run(args)


if __name__ == "__main__":
    sys.exit(main())
