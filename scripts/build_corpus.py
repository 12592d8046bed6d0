#!/usr/bin/env python3
"""Build a labelled corpus of freely licensed raster images from Debian 12 packages.

Usage::

    python scripts/build_corpus.py OUT [--size 128] [--max-per-label N]
                                       [--labels context|package] [--cache DIR]

What it makes
    OUT/<label>/<name>.png  RGB, --size x --size, transparent areas flattened on
                            white, aspect kept by white padding; pixel-identical
                            images are kept once.
    OUT/SOURCES.txt         package, version, license and image count per source.
    OUT/COPYRIGHTS.txt      the full Debian copyright file of every source package
                            (the attribution the CC-BY-SA/GPL/LGPL terms ask for).

Where from (Debian 12 "bookworm", main; fetched with ``apt-get download`` and
unpacked with ``dpkg-deb --fsys-tarfile``, nothing is installed):

    package                     what is taken                        license
    oxygen-icon-theme           Oxygen icons, largest PNG per name    LGPL-3+
    mate-icon-theme             MATE icons, largest PNG per name      LGPL-3+ or CC-BY-SA
    faenza-icon-theme           Faenza icons, largest PNG per name    GPL-3+
    elementary-xfce-icon-theme  elementary-xfce icons, largest PNG    GPL-2+
    lxde-icon-theme             nuoveXT2 icons, largest PNG per name  LGPL-3+
    ruby-gemojione              EmojiOne 2 emoji, 64x64 PNG           CC-BY-SA-4.0
    freeciv-data                national flags, 44x30 PNG             GPL-2+ (two PD)
    wesnoth-1.16-data           unit sprites, portraits, terrain      GPL-2+
                                hexes, items/scenery, attack icons

(gnome-icon-theme is left out on purpose: most MATE icons are near-copies of it.)

Labels
    --labels context (default): what the image shows. Icon themes give the
        freedesktop icon context (actions, apps, categories, devices, emblems,
        emotes, mimetypes, places, status); the other sources give emoji, flags,
        units, portraits, terrain, objects, attacks.  File names are
        <source>__<name>.png.
    --labels package: the source collection, i.e. the icon theme (oxygen, mate,
        faenza, elementary-xfce, nuovext2) or the package (gemojione, freeciv,
        wesnoth).  File names are <context>__<name>.png.

    For a retrieval benchmark, the visually coherent context labels are
    mimetypes, places, units, portraits, objects and emoji; flags, terrain and
    attacks are trivially separable by shape, while actions, apps, status,
    devices, categories and emblems are semantic rather than visual groups.

Result with the defaults: about 7,350 images in 16 labels, about 100 MB.
Download about 255 MB (wesnoth-1.16-data is 146 MB of it), cached in --cache
(default: a temporary directory that is removed afterwards).  A run takes about
55 s on 2 cores with the .deb files cached, about 75 s including the download.
Needs apt-get and dpkg-deb (Debian), Python 3.11, numpy and Pillow.  If apt has
no package lists yet, it runs ``apt-get update`` when root and otherwise asks
you to.
Deterministic: inputs are processed in sorted order and --max-per-label samples
with a fixed seed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import posixpath
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 0
MIN_SIDE = 24  # source images smaller than this on their longest side are skipped
RASTER_EXT = (".png", ".xpm", ".jpg", ".jpeg")

# Icon-theme context directories -> context label (others are skipped).
CONTEXTS: dict[str, str] = {
    "actions": "actions",
    "stock": "actions",
    "apps": "apps",
    "applets": "apps",
    "categories": "categories",
    "devices": "devices",
    "emblems": "emblems",
    "emotes": "emotes",
    "mimetypes": "mimetypes",
    "mimes": "mimetypes",
    "places": "places",
    "filesystems": "places",
    "status": "status",
    "notifications": "status",
    "panel": "status",
}


class CorpusError(Exception):
    """A fatal, user-facing problem; printed as one line."""


@dataclass(frozen=True)
class Candidate:
    """One image chosen from a package."""

    member: str  # path inside the package's data tarball
    context: str  # label in --labels context
    group: str  # label in --labels package
    name: str  # unique within (source, context)
    crop: bool = False  # crop to the non-transparent bounding box first
    hex_tile: bool = False  # keep only if it is a full (opaque) terrain hexagon


@dataclass(frozen=True)
class Source:
    package: str
    license: str
    prefixes: tuple[str, ...]  # member path prefixes to read into memory
    select: Callable[[list[str]], list[Candidate]]


# --------------------------------------------------------------------------
# Selection of files inside each package


_SIZE_DIR = re.compile(r"^(\d+)(?:x(\d+))?(?:@(\d+)x?)?$")


def _icon_theme(theme: str, group: str) -> Callable[[list[str]], list[Candidate]]:
    """Largest raster of every (context, icon name) in usr/share/icons/<theme>."""
    root = f"usr/share/icons/{theme}/"

    def select(members: list[str]) -> list[Candidate]:
        best: dict[tuple[str, str], tuple[int, str]] = {}
        for m in members:
            if not m.startswith(root) or not m.lower().endswith(RASTER_EXT):
                continue
            parts = m[len(root) :].split("/")[:-1]
            size = 0
            context = ""
            for p in parts:
                sm = _SIZE_DIR.match(p)
                if sm:
                    size = int(sm.group(1)) * int(sm.group(3) or 1)
                elif p in CONTEXTS:
                    context = CONTEXTS[p]
            if not context or not size:
                continue
            name = posixpath.splitext(posixpath.basename(m))[0]
            key = (context, name)
            if key not in best or (size, m) > best[key]:
                best[key] = (size, m)
        return [
            Candidate(member=m, context=c, group=group, name=n)
            for (c, n), (_, m) in sorted(best.items())
        ]

    return select


def _gemojione(members: list[str]) -> list[Candidate]:
    d = "usr/share/rubygems-integration/all/gems/"
    out = []
    for m in members:
        if m.startswith(d) and "/assets/png/" in m and m.endswith(".png"):
            name = posixpath.splitext(posixpath.basename(m))[0]
            out.append(Candidate(member=m, context="emoji", group="gemojione", name=name))
    return out


def _freeciv_flags(members: list[str]) -> list[Candidate]:
    d = "usr/share/games/freeciv/flags/"
    out = []
    for m in members:
        if m.startswith(d) and m.endswith("-large.png") and "-shield" not in m:
            name = posixpath.basename(m)[: -len("-large.png")]
            out.append(Candidate(member=m, context="flags", group="freeciv", name=name))
    return out


_WES = "usr/share/games/wesnoth/1.16/data/core/images/"
# animation frames and attack poses of units: <unit>-<anim>[-<dir>][-N].png
# (any unit file name ending in a digit is an animation frame, too)
_WES_FRAME = re.compile(
    r"-(?:\d+|attack|defend|die|death|melee|ranged|magic|idle|moving|leading|flying|fly|"
    r"bow|sword|spear|staff|breath|fire|cold|ice|blade|pierce|impact|arcane|"
    r"n|ne|nw|s|se|sw)(?:[-.]|\d)"
)
_WES_DIR_SUFFIX = re.compile(r"(?:^|-)(?:n|ne|nw|s|se|sw|\d+)(?=-|$)")


def _wesnoth(members: list[str]) -> list[Candidate]:
    out = []
    for m in sorted(members):
        if not m.startswith(_WES) or not m.endswith(".png"):
            continue
        rel = m[len(_WES) :]
        top, _, rest = rel.partition("/")
        stem = posixpath.splitext(rest)[0]
        base = posixpath.basename(stem)
        name = stem.replace("/", "_")
        if top == "units":
            if _WES_FRAME.search(base + ".") or base[-1].isdigit():
                continue
            out.append(Candidate(m, "units", "wesnoth", name, crop=True))
        elif top == "portraits":
            if "/transparent/" in m or not posixpath.dirname(rest):
                continue
            out.append(Candidate(m, "portraits", "wesnoth", name, crop=True))
        elif top == "terrain":
            if _WES_DIR_SUFFIX.search(base) or posixpath.dirname(rest) in ("masks", "off-map"):
                continue
            out.append(Candidate(m, "terrain", "wesnoth", name, hex_tile=True))
        elif top in ("items", "scenery"):
            if _WES_DIR_SUFFIX.search(base):
                continue
            out.append(Candidate(m, "objects", "wesnoth", f"{top}_{name}", crop=True))
        elif top == "attacks":
            out.append(Candidate(m, "attacks", "wesnoth", name))
    return out


SOURCES: tuple[Source, ...] = (
    Source("oxygen-icon-theme", "LGPL-3+", ("usr/share/icons/oxygen/",),
           _icon_theme("oxygen", "oxygen")),
    Source("mate-icon-theme", "LGPL-3+ or CC-BY-SA", ("usr/share/icons/mate/",),
           _icon_theme("mate", "mate")),
    Source("faenza-icon-theme", "GPL-3+", ("usr/share/icons/Faenza/",),
           _icon_theme("Faenza", "faenza")),
    Source("elementary-xfce-icon-theme", "GPL-2+", ("usr/share/icons/elementary-xfce/",),
           _icon_theme("elementary-xfce", "elementary-xfce")),
    Source("lxde-icon-theme", "LGPL-3+", ("usr/share/icons/nuoveXT2/",),
           _icon_theme("nuoveXT2", "nuovext2")),
    Source("ruby-gemojione", "CC-BY-SA-4.0 (images; code Expat)",
           ("usr/share/rubygems-integration/",), _gemojione),
    Source("freeciv-data", "GPL-2+ (flags of Saxony and Sikkim: public domain)",
           ("usr/share/games/freeciv/flags/",), _freeciv_flags),
    Source("wesnoth-1.16-data", "GPL-2+", (_WES,), _wesnoth),
)


# --------------------------------------------------------------------------
# Fetching packages


class Apt:
    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.updated = False
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise CorpusError(
                    f"{tool} not found: this script needs a Debian 12 system with apt and dpkg"
                )

    def deb(self, package: str) -> Path:
        """The cached .deb of package, downloading it with apt-get if missing."""
        found = sorted(self.cache.glob(f"{package}_*.deb"))
        if found:
            return found[-1]
        for attempt in range(2):
            r = subprocess.run(
                ["apt-get", "download", "-q", package],
                cwd=self.cache, capture_output=True, text=True,
            )
            found = sorted(self.cache.glob(f"{package}_*.deb"))
            if r.returncode == 0 and found:
                return found[-1]
            if attempt == 0 and not self.updated and os.geteuid() == 0:
                print("  apt-get download failed; running apt-get update once", flush=True)
                u = subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True)
                self.updated = True
                if u.returncode == 0:
                    continue
            msg = (r.stderr.strip().splitlines() or ["unknown error"])[-1]
            hint = "" if os.geteuid() == 0 else " (try: sudo apt-get update)"
            raise CorpusError(f"apt-get download {package} failed: {msg}{hint}")
        raise AssertionError("unreachable")


def deb_version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def read_members(deb: Path, prefixes: tuple[str, ...], doc: str) -> dict[str, bytes | str]:
    """Regular files under prefixes (bytes) and symlinks (str: resolved member path).

    Also reads the file ``doc``.  Streams ``dpkg-deb --fsys-tarfile`` without
    writing anything to disk.
    """
    out: dict[str, bytes | str] = {}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for ti in tar:
            name = posixpath.normpath(ti.name.lstrip("./")) if ti.name not in (".", "./") else ""
            if name != doc and not name.startswith(prefixes):
                continue
            if ti.isfile():
                f = tar.extractfile(ti)
                assert f is not None
                out[name] = f.read()
            elif ti.issym():
                out[name] = posixpath.normpath(posixpath.join(posixpath.dirname(name), ti.linkname))
            elif ti.islnk():
                out[name] = posixpath.normpath(ti.linkname.lstrip("./"))
    if proc.wait() != 0:
        raise CorpusError(f"dpkg-deb --fsys-tarfile {deb.name} failed")
    return out


def resolve(members: dict[str, bytes | str], path: str) -> bytes | None:
    for _ in range(20):
        v = members.get(path)
        if v is None or isinstance(v, bytes):
            return v
        path = v
    return None


# --------------------------------------------------------------------------
# Image processing (runs in worker processes)


@dataclass(frozen=True)
class Job:
    data: bytes
    size: int
    crop: bool
    hex_tile: bool


def process(job: Job) -> bytes | None:
    """PNG bytes of the normalised image, or None if it is rejected."""
    try:
        im = Image.open(io.BytesIO(job.data))
        im.load()
    except Exception:  # noqa: BLE001 - corrupt or unsupported file: skip it
        return None
    if max(im.size) < MIN_SIDE:
        return None
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba)[..., 3]
    if job.hex_tile and (rgba.size != (72, 72) or (alpha > 128).mean() < 0.75):
        return None
    if job.crop:
        ys, xs = np.nonzero(alpha > 16)
        if len(xs) == 0:
            return None
        rgba = rgba.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    w, h = rgb.size
    scale = job.size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        rgb = rgb.resize((nw, nh), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (job.size, job.size), (255, 255, 255))
    canvas.paste(rgb, ((job.size - nw) // 2, (job.size - nh) // 2))
    px = np.asarray(canvas)
    if int(px.max()) - int(px.min()) < 16:  # blank or nearly uniform
        return None
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


# --------------------------------------------------------------------------


_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def safe(s: str) -> str:
    return _SAFE.sub("_", s).strip("_") or "x"


@dataclass
class Item:
    label: str
    filename: str
    png: bytes
    package: str


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / "SOURCES.txt").exists():
            raise CorpusError(f"{out} is not empty and is not a corpus made by this script")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)


def build(out: Path, cache: Path, size: int, max_per_label: int | None, labels: str,
          workers: int) -> list[Item]:
    """Write the corpus to out; returns the written images (label, file name, package)."""
    t0 = time.monotonic()
    apt = Apt(cache)
    prepare_out(out)
    seen: set[bytes] = set()
    items: list[Item] = []
    sources_lines: list[str] = []
    copyrights: list[str] = []
    counts_per_pkg: dict[str, int] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for src in SOURCES:
            t = time.monotonic()
            deb = apt.deb(src.package)
            version = deb_version(deb)
            doc = f"usr/share/doc/{src.package}/copyright"
            members = read_members(deb, src.prefixes, doc)
            cands = src.select(sorted(k for k in members if k != doc))
            jobs: list[Job] = []
            kept: list[Candidate] = []
            for c in cands:
                data = resolve(members, c.member)
                if data is not None:
                    jobs.append(Job(data, size, c.crop, c.hex_tile))
                    kept.append(c)
            results = list(pool.map(process, jobs, chunksize=32))
            n_new = 0
            for c, png in zip(kept, results, strict=True):
                if png is None:
                    continue
                digest = hashlib.sha1(png).digest()
                if digest in seen:
                    continue
                seen.add(digest)
                if labels == "context":
                    label, fname = c.context, f"{c.group}__{c.name}"
                else:
                    label, fname = c.group, f"{c.context}__{c.name}"
                items.append(Item(safe(label), safe(fname) + ".png", png, src.package))
                n_new += 1
            counts_per_pkg[src.package] = n_new
            cr = members.get(doc)
            copyrights.append(
                f"===== {src.package} {version} =====\n"
                + (cr.decode("utf-8", "replace") if isinstance(cr, bytes) else "(missing)\n")
            )
            sources_lines.append(f"{src.package}\t{version}\t{src.license}")
            print(
                f"  {src.package} {version}: {len(cands)} candidates -> {n_new} new images "
                f"({deb.stat().st_size / 1e6:.0f} MB deb, {time.monotonic() - t:.1f}s)",
                flush=True,
            )

    by_label: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_label[it.label].append(it)
    final: list[Item] = []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda i: i.filename)
        if max_per_label is not None and len(group) > max_per_label:
            group = sorted(random.Random(f"{SEED}:{label}").sample(group, max_per_label),
                           key=lambda i: i.filename)
        final.extend(group)

    used: set[tuple[str, str]] = set()
    per_label: Counter[str] = Counter()
    per_pkg: Counter[str] = Counter()
    for it in final:
        fname = it.filename
        k = 1
        while (it.label, fname) in used:  # name clash after sanitising
            k += 1
            fname = f"{it.filename[:-4]}~{k}.png"
        used.add((it.label, fname))
        it.filename = fname
        d = out / it.label
        d.mkdir(exist_ok=True)
        (d / fname).write_bytes(it.png)
        per_label[it.label] += 1
        per_pkg[it.package] += 1

    header = (
        f"# Built by scripts/build_corpus.py (--size {size} --labels {labels}"
        f"{'' if max_per_label is None else f' --max-per-label {max_per_label}'}).\n"
        "# Debian 12 packages; full copyright texts in COPYRIGHTS.txt.\n"
        "# package\tversion\tlicense\timages\n"
    )
    body = "".join(f"{line}\t{per_pkg[line.split(chr(9))[0]]}\n" for line in sources_lines)
    (out / "SOURCES.txt").write_text(header + body)
    (out / "COPYRIGHTS.txt").write_text("\n".join(copyrights))

    print(f"wrote {len(final)} images in {len(per_label)} labels to {out} "
          f"in {time.monotonic() - t0:.0f}s")
    for label in sorted(per_label):
        print(f"  {label:<12} {per_label[label]:6d}")
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path,
                    help="output directory (created; a previous corpus there is replaced)")
    ap.add_argument("--size", type=int, default=128, help="side of the square output images")
    ap.add_argument("--max-per-label", type=int, default=None, metavar="N",
                    help="keep at most N images per label (seeded random sample)")
    ap.add_argument("--labels", choices=("context", "package"), default="context",
                    help="context: what the image shows; package: which theme/package")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory to keep downloaded .deb files in (default: temporary)")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = ap.parse_args(argv)
    if args.size < 8:
        ap.error("--size must be at least 8")
    if args.max_per_label is not None and args.max_per_label < 1:
        ap.error("--max-per-label must be positive")
    return with_cache(args.cache, "corpus-debs-", lambda cache: build(
        args.out, cache, args.size, args.max_per_label, args.labels, args.workers))


def with_cache(cache: Path | None, prefix: str, run: Callable[[Path], object]) -> int:
    """run(cache folder) (a temporary one, removed after, when `cache` is None); the exit
    status: 1, with the error on stderr, when it raises CorpusError."""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    try:
        if cache is None:
            tmp = tempfile.TemporaryDirectory(prefix=prefix)
            cache = Path(tmp.name)
        else:
            cache.mkdir(parents=True, exist_ok=True)
        run(cache.resolve())
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
