#!/usr/bin/env python3
"""Pick an evaluation set from a labelled corpus: links to at most N images per label.

    eval_split.py CORPUS OUT [--labels emoji,mimetypes,...] [--max-per-label 300]
                             [--train TRAIN]

OUT/<label>/<name> link to CORPUS/<label>/<name>, evenly spaced through each
label's sorted file list (deterministic; no label dominates the scores).
With --train, TRAIN/<label>/<name> link to every image of every *other*
label: a training folder that shares no label with OUT, so a model trained
on TRAIN and measured on OUT is measured on images of kinds it never saw.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# Coherent but not trivial under a raw-pixel search (see build_corpus.py).
DEFAULT_LABELS = "emoji,mimetypes,objects,places,portraits,units"


def link(sources: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for source in sources:
        target = folder / source.name
        if not target.exists():
            target.symlink_to(source.resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--labels", default=DEFAULT_LABELS)
    parser.add_argument("--max-per-label", type=int, default=300)
    parser.add_argument("--train", type=Path, default=None,
                        help="also link every image of the other labels here")
    args = parser.parse_args()
    held = args.labels.split(",")
    labels = sorted(p.name for p in args.corpus.iterdir() if p.is_dir())
    unknown = sorted(set(held) - set(labels))
    if unknown:
        parser.error(f"no such label in {args.corpus}: {', '.join(unknown)}")
    for label in held:
        files = sorted((args.corpus / label).iterdir())
        step = max(1, -(-len(files) // args.max_per_label))
        chosen = files[step - 1::step][:args.max_per_label]
        link(chosen, args.out / label)
        print(f"eval  {label}: {len(chosen)} of {len(files)}")
    if args.train is not None:
        for label in labels:
            if label not in held:
                files = sorted((args.corpus / label).iterdir())
                link(files, args.train / label)
                print(f"train {label}: {len(files)}")


if __name__ == "__main__":
    main()
