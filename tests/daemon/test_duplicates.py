"""`near_duplicate` in results files and `lookalike duplicates`, through the real process
with the shipped encoder."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import yaml
from PIL import Image

from lookalike.core import copies
from tests.core.test_copies import made_copies, picture
from tests.helpers import run_lookalike


def flags(inbox: Path, name: str) -> dict[str, bool]:
    document = json.loads((inbox / f"{name}.neighbors.json").read_text())
    return {n["path"]: n["near_duplicate"] for n in document["neighbors"]}


def test_copies_marked_groups_listed_and_a_strictness_change_rewrites(
        tmp_path: Path, digits_root: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "photo").mkdir(parents=True)
    original = picture()
    original.save(inbox / "photo" / "original.jpg", quality=95)
    for kind, copy in made_copies(original).items():
        copy.save(inbox / "photo" / f"{kind}.jpg", quality=60)
    for angle in (3, 5, 8):  # rotated copies: marked by loose, not all by strict
        original.rotate(angle, Image.Resampling.BICUBIC).save(inbox / "photo" / f"rot{angle}.jpg")
    (inbox / "photo" / "same.jpg").write_bytes((inbox / "photo" / "original.jpg").read_bytes())
    for source in sorted((digits_root / "3").glob("*.png"))[:8]:
        Image.open(source).convert("RGB").save(inbox / f"three-{source.name}")
    config = tmp_path / "config.yaml"
    settings = {"inbox": "./inbox", "state_dir": "./state", "duplicates": {"strictness": "loose"}}
    config.write_text(yaml.safe_dump(settings))
    done = run_lookalike("run", "--once", "-c", config, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr

    marked = flags(inbox, "photo/original.jpg")
    assert all(marked[f"photo/{kind}.jpg"] for kind in ("half", "mirror", "gray", "crop80",
                                                         "same"))
    assert not any(v for path, v in marked.items() if path.startswith("three-"))
    three = sorted(p.name for p in inbox.glob("three-*.png"))[0]
    assert not any(flags(inbox, three).values())

    text = run_lookalike("duplicates", "-c", config, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith("group 1: ")
    assert "photo/original.jpg  " in text.stdout and "(best original" in text.stdout
    assert "identical to photo/" in text.stdout
    lines = run_lookalike("duplicates", "--json", "-c", config, cwd=tmp_path).stdout.splitlines()
    group = json.loads(lines[0])
    assert group["group"] == 1 and {"photo/original.jpg", "photo/same.jpg", "photo/half.jpg",
                                    "photo/crop80.jpg"} <= {i["path"] for i in group["images"]}
    best = [image for image in group["images"] if image["best"]]
    assert len(best) == 1 and (best[0]["width"], best[0]["height"]) == (360, 240)
    assert {image["identical_to"] for image in group["images"]} - {None} <= \
        {"photo/original.jpg", "photo/same.jpg"}
    drawn = run_lookalike("duplicates", "--sheet", tmp_path / "groups.png", "-c", config,
                          cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert Image.open(tmp_path / "groups.png").size[0] > 200
    refused = run_lookalike("duplicates", "--sheet", tmp_path / "groups.txt", "-c", config,
                            cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr

    # strict: every results file says what the strict rule decides of its neighbours
    settings["duplicates"] = {"strictness": "strict"}
    config.write_text(yaml.safe_dump(settings))
    again = run_lookalike("run", "--once", "-c", config, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(tmp_path / "state" / "library.sqlite") as db:
        thumbs = {path: copies.Picture(thumb, copies.shape_of(width, height)) for path, thumb,
                  width, height in db.execute("SELECT path, thumb, width, height FROM images")}
        sha = dict(db.execute("SELECT path, sha256 FROM images"))
    changed = 0
    for results in inbox.rglob("*.neighbors.json"):
        document = json.loads(results.read_text())
        query = document["query"]
        for n in document["neighbors"]:
            strict = n["duplicate"] or copies.Judge("strict").is_copy(
                n["distance"], thumbs[query], thumbs[n["path"]])
            loose = n["duplicate"] or copies.Judge("loose").is_copy(
                n["distance"], thumbs[query], thumbs[n["path"]])
            assert n["near_duplicate"] == strict, (query, n)
            assert n["duplicate"] == (sha[query] == sha[n["path"]])
            changed += strict != loose
    assert changed, "no mark differs between loose and strict here: the test proves nothing"
