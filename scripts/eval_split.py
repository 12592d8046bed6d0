#!/usr/bin/env python3
"""Pick an evaluation set from a labelled corpus: links to at most N images per label.

    eval_split.py CORPUS OUT --labels emoji,mimetypes,... [--max-per-label 300]

OUT/<label>/<name> link to CORPUS/<label>/<name>, evenly spaced through each
label's sorted file list (deterministic; no label dominates the scores).
"""
from __future__ import annotations

import argparse
from pathlib import Path

# Coherent but not trivial under a raw-pixel search (see build_corpus.py).
DEFAULT_LABELS = "emoji,mimetypes,objects,places,portraits,units"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--labels", default=DEFAULT_LABELS)
    parser.add_argument("--max-per-label", type=int, default=300)
    args = parser.parse_args()
    for label in args.labels.split(","):
        files = sorted((args.corpus / label).iterdir())
        step = max(1, -(-len(files) // args.max_per_label))
        chosen = files[step - 1::step][:args.max_per_label]
        (args.out / label).mkdir(parents=True, exist_ok=True)
        for source in chosen:
            link = args.out / label / source.name
            if not link.exists():
                link.symlink_to(source.resolve())
        print(f"{label}: {len(chosen)} of {len(files)}")


if __name__ == "__main__":
    main()
