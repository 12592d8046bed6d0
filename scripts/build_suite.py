#!/usr/bin/env python3
"""Build an evaluation suite of image-retrieval domains, each split into dev and held-out.

Usage::

    python scripts/build_suite.py OUT [--cache DIR]
                                      [--domains digits,icons,glyphs,photos,textures]
                                      [--workers N]

What it makes (a benchmark runner relies on exactly this layout)::

    OUT/<domain>/kind              "labels" (retrieval by label) or "copies" (copy detection)
    OUT/<domain>/dev/<label>/<file>
    OUT/<domain>/heldout/<label>/<file>
    OUT/<domain>/SOURCES.txt       package, version, license and image counts per source
    OUT/<domain>/COPYRIGHTS.txt    the Debian copyright file of every package used (the
                                   attribution the CC-BY-SA/GPL terms ask for)
    OUT/glyphs/LABELS.txt          label, character, part and number of fonts

Dev and held-out share no label (no class, no original photograph), so a model
trained on dev is measured on kinds of images it never saw.  Only the domains
named by --domains are (re)built; each replaces its old folder when it is
complete, and the other domains in OUT are left alone.

Domains
    digits (labels)    scikit-learn's ``load_digits()``: 1,797 real 8x8 handwritten
                       digits, dark ink on white, upscaled to 64x64 grayscale PNG.
                       dev = digits 0-4, held-out = digits 5-9.
    icons (labels)     the Debian icon corpus of scripts/build_corpus.py (its defaults:
                       128x128 PNG, context labels).  held-out = emoji, mimetypes,
                       objects, places, portraits, units, at most 300 images each,
                       evenly spaced in sorted order; dev = every image of the ten
                       other labels.
    glyphs (labels)    about 230 characters of eight scripts (Latin, Greek, Cyrillic,
                       kana, kanji, Hangul, Devanagari, Arabic), one label per character,
                       16 samples each (at least 12): the character in a different font,
                       at a random size, near the middle, at a slight slant, in dark ink of a
                       random colour on a paper-like ground (warm, cool or grey tint,
                       grain, fibres, stains, sometimes a vignette); 256x256 RGB JPEG.
                       Characters that look alike across scripts (Latin A, Greek Alpha,
                       Cyrillic A...) and case pairs of one shape (o/O, s/S...) are left
                       out.  A font whose rendering of a character is its .notdef (tofu)
                       glyph, nothing, or a shape it draws for several characters is not
                       used for it.  Two thirds of each script's characters are dev, one
                       third held-out.
    photos (copies)    about 360 photographs, paintings and rendered wallpapers (no
                       vector or flat-colour art, one of each light/dark or colour
                       variant), one label each, half dev and half held-out by source.
                       Each label folder holds ``original.jpg`` (long side at most 1024
                       px, quality 95) and 12 copies named by kind: downscale50.jpg,
                       jpeg30.jpg, webp50.webp, thumb320.png, crop80.jpg, crop60.jpg,
                       bright.jpg, gray.jpg, blur3.jpg, rotate5.jpg, overlay.jpg,
                       mirror.jpg (Copydays-style; see COPY_KINDS).
    textures (labels)  about 200 patterns and textures, one label each, 10 samples each:
                       random crops of 40-90% of the side of the tiled texture, rotated
                       by up to 12 degrees, resized to 128x128 RGB PNG.  Half dev, half
                       held-out by source.

Where from (Debian 12 "bookworm", main; fetched with ``apt-get download`` and
unpacked with ``dpkg-deb --fsys-tarfile`` as build_corpus.py does, nothing is
installed; the scikit-learn digits come with scikit-learn):

    domain    packages                                           licenses
    icons     see scripts/build_corpus.py                        LGPL-3+, GPL-2+/3+, CC-BY-SA
    glyphs    55 font packages (FONT_PACKAGES): fonts-noto-core, OFL-1.1, GPL-2/3 (font
              fonts-noto-cjk, fonts-urw-base35, fonts-dejavu-    exception), Apache-2.0,
              core, fonts-ipafont-*, fonts-arphic-u*, fonts-     IPA, Arphic, Bitstream
              unfonts-core, fonts-nanum, fonts-kacst, ...        Vera, MIT, BSD
    photos    endless-sky-data (landscape photographs),          public domain, CC-BY-SA-3.0
              python3-skimage (sample photographs),              /4.0, CC0, GPL-2+,
              wesnoth-1.16-data (story paintings), mate-,        LGPL-2.1+
              gnome-, ukui- and plasma-workspace- wallpapers,
              lxqt-themes
    textures  gimp-data, gimp-data-extras (GIMP .pat patterns),  GPL-2+/3+, GPL and LGPL,
              krita-data (Krita patterns), python3-skimage       CC0
              (brick, grass, gravel)

Each domain's SOURCES.txt names every package with its version, license and
image counts, and its COPYRIGHTS.txt holds the packages' full copyright files.

Size and time: about 17,700 files, 480 MB (280 MB of it photos).  It downloads 73
packages, 800 MB of .deb files (most of it wesnoth-1.16-data, plasma-workspace-
wallpapers, endless-sky-data and fonts-noto-cjk), cached in --cache (default: a
temporary directory that is removed afterwards).  On 2 cores a build with a warm
cache takes about 4.5 minutes with --workers 1, about a minute more when it has
to download everything.
Needs apt-get and dpkg-deb (Debian), Python 3.11, numpy, Pillow (with FreeType and
WebP) and scikit-learn.  Deterministic: inputs are processed in sorted order and
every random choice comes from a generator seeded with the label it is for, so
the output does not depend on --workers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import os
import random
import re
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_corpus import (  # noqa: E402
    Apt,
    CorpusError,
    deb_version,
    read_members,
    resolve,
    safe,
    with_cache,
)
from build_corpus import build as build_corpus  # noqa: E402

DOMAINS = ("digits", "icons", "glyphs", "photos", "textures")
# The icon contexts held out: coherent, but not trivial under a raw-pixel search
# (build_corpus.py's docstring says which contexts are which).
ICON_HELDOUT_LABELS = "emoji,mimetypes,objects,places,portraits,units"
KINDS = {"digits": "labels", "icons": "labels", "glyphs": "labels", "photos": "copies",
         "textures": "labels"}
PARTS = ("dev", "heldout")
SEED = 0

T = TypeVar("T")
R = TypeVar("R")


class SuiteError(CorpusError):
    """A fatal, user-facing problem; printed as one line."""


# --------------------------------------------------------------------------
# Helpers shared by the domains


def seed_of(*parts: object) -> int:
    """A stable 64-bit seed for a tuple of names (Python's hash() is salted per run)."""
    text = "\x1f".join(str(p) for p in (SEED, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def rng_of(*parts: object) -> np.random.Generator:
    return np.random.default_rng(seed_of(*parts))


def alternate(names: Iterable[str], *key: object, heldout_every: int = 2) -> dict[str, str]:
    """Part of each name: sorted, shuffled with a fixed seed, every n-th one held out."""
    order = sorted(names)
    random.Random(seed_of("split", *key)).shuffle(order)
    return {name: ("heldout" if i % heldout_every == heldout_every - 1 else "dev")
            for i, name in enumerate(order)}


def evenly_spaced(files: Sequence[T], n: int) -> list[T]:
    """At most n items evenly spaced through files (the same each build)."""
    step = max(1, -(-len(files) // n))
    return list(files[step - 1::step][:n])


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def flatten(im: Image.Image) -> Image.Image:
    """RGB, transparent areas on white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).clip(0, 255)
                             .astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


@dataclass
class Package:
    """A fetched Debian package: its version and the members read from it."""

    name: str
    version: str
    members: dict[str, bytes | str]
    copyright: str

    def data(self, member: str) -> bytes | None:
        return resolve(self.members, member)

    def files(self) -> list[str]:
        """Member paths that hold data (regular files, or links to one), sorted."""
        return sorted(m for m in self.members if self.data(m) is not None)


@dataclass
class Context:
    apt: Apt
    workers: int
    scratch: Path
    pool: ProcessPoolExecutor | None = None

    def fetch(self, package: str, prefixes: tuple[str, ...]) -> Package:
        deb = self.apt.deb(package)
        doc = f"usr/share/doc/{package}/copyright"
        members = read_members(deb, prefixes, doc)
        text = members.pop(doc, None)
        if isinstance(text, str):  # a symlink to another package's copyright file
            text = None
        return Package(package, deb_version(deb), members,
                       text.decode("utf-8", "replace") if text else "(missing)\n")

    def map(self, fn: Callable[[T], R], items: Sequence[T], chunksize: int = 1) -> Iterator[R]:
        """fn over items in order, in the worker processes when there are several."""
        if self.workers <= 1 or len(items) < 2:
            return map(fn, items)
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=self.workers)
        return self.pool.map(fn, items, chunksize=chunksize)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


@dataclass
class SourceRow:
    package: str
    version: str
    license: str
    counts: Counter[str] = field(default_factory=Counter)  # images per part


@dataclass
class Domain:
    """A domain being written into a fresh folder, moved into place by finish()."""

    name: str
    root: Path  # the final OUT/<name>
    rows: dict[str, SourceRow] = field(default_factory=dict)
    copyrights: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    images: Counter[str] = field(default_factory=Counter)  # per part
    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @property
    def work(self) -> Path:
        return self.root.parent / f".{self.name}.partial"

    def start(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        for part in PARTS:
            (self.work / part).mkdir(parents=True)
        (self.work / "kind").write_text(KINDS[self.name] + "\n")

    def source(self, package: str, version: str, license: str) -> SourceRow:
        if package not in self.rows:
            self.rows[package] = SourceRow(package, version, license)
        return self.rows[package]

    def add_package(self, pkg: Package, license: str) -> SourceRow:
        self.copyrights[pkg.name] = f"===== {pkg.name} {pkg.version} =====\n{pkg.copyright}"
        return self.source(pkg.name, pkg.version, license)

    def write(self, part: str, label: str, filename: str, data: bytes, package: str) -> None:
        folder = self.work / part / label
        folder.mkdir(exist_ok=True)
        (folder / filename).write_bytes(data)
        self.count(part, label, package)

    def count(self, part: str, label: str, package: str) -> None:
        self.images[part] += 1
        self.labels[part].add(label)
        self.rows[package].counts[part] += 1

    def finish(self, description: str) -> None:
        shared = self.labels["dev"] & self.labels["heldout"]
        if shared:
            raise SuiteError(f"{self.name}: labels in both parts: {sorted(shared)[:5]}")
        lines = [f"# {self.name}: {KINDS[self.name]}; built by scripts/build_suite.py.",
                 *(f"# {line}" for line in description.strip().splitlines()),
                 *(f"# {note}" for note in self.notes),
                 f"# dev: {len(self.labels['dev'])} labels, {self.images['dev']} images; "
                 f"heldout: {len(self.labels['heldout'])} labels, "
                 f"{self.images['heldout']} images.",
                 "# package\tversion\tlicense\tdev images\theldout images"]
        lines += [f"{r.package}\t{r.version}\t{r.license}\t{r.counts['dev']}\t"
                  f"{r.counts['heldout']}" for r in self.rows.values()]
        (self.work / "SOURCES.txt").write_text("\n".join(lines) + "\n")
        if self.copyrights:
            (self.work / "COPYRIGHTS.txt").write_text("\n".join(self.copyrights.values()))
        if self.root.exists():
            shutil.rmtree(self.root)
        self.work.rename(self.root)

    def summary(self) -> str:
        return (f"{self.name:<9} {KINDS[self.name]:<7} "
                + "   ".join(f"{part} {len(self.labels[part]):4d} labels "
                             f"{self.images[part]:6d} images" for part in PARTS))


# --------------------------------------------------------------------------
# digits


def build_digits(ctx: Context, dom: Domain) -> None:
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    dom.source("scikit-learn (PyPI)", sklearn.__version__,
               "BSD-3-Clause; the data: UCI Optical Recognition of Handwritten Digits, "
               "CC-BY-4.0")
    for n, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        # 0..16 ink counts -> dark ink on white paper, as a scan would look.
        gray = (255 - pixels / 16.0 * 255).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(gray, "L").resize((64, 64), Image.Resampling.BILINEAR)
        part = "dev" if label < 5 else "heldout"
        dom.write(part, str(int(label)), f"{n:04d}.png", encode(image, "PNG"),
                  "scikit-learn (PyPI)")


DIGITS_ABOUT = """\
scikit-learn's load_digits(): 1,797 real 8x8 handwritten digits (UCI), dark ink on
white, upscaled to 64x64 grayscale PNG (bilinear). dev = digits 0-4, heldout = 5-9."""


# --------------------------------------------------------------------------
# icons


def build_icons(ctx: Context, dom: Domain) -> None:
    corpus = ctx.scratch / "icons-corpus"
    items = build_corpus(corpus, ctx.apt.cache, 128, None, "context", ctx.workers)
    package_of = {(it.label, it.filename): it.package for it in items}
    versions: dict[str, tuple[str, str]] = {}
    for line in (corpus / "SOURCES.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            package, version, license, _ = line.split("\t")
            versions[package] = (version, license)
    for package, (version, license) in versions.items():
        dom.source(package, version, license)
    dom.copyrights["build_corpus"] = (corpus / "COPYRIGHTS.txt").read_text()
    held = ICON_HELDOUT_LABELS.split(",")
    for label_dir in sorted(p for p in corpus.iterdir() if p.is_dir()):
        files = sorted(label_dir.iterdir())
        label = label_dir.name
        part = "heldout" if label in held else "dev"
        chosen = evenly_spaced(files, 300) if part == "heldout" else files
        (dom.work / part / label).mkdir()
        for f in chosen:
            f.rename(dom.work / part / label / f.name)
            dom.count(part, label, package_of[(label, f.name)])
    shutil.rmtree(corpus)


ICONS_ABOUT = f"""\
The corpus of scripts/build_corpus.py (128x128 PNG, --labels context), split as
heldout = {ICON_HELDOUT_LABELS.replace(",", ", ")}
(at most 300 images each, evenly spaced); dev = every image of the other labels."""


# --------------------------------------------------------------------------
# glyphs

GLYPH_SIZE = 256
RENDER_SIZE = 200  # font size the glyphs are drawn at, then scaled down
SCAN_SIZE = 64  # font size of the coverage scan
MAX_STYLES = 16
MIN_STYLES = 12

# Characters per script, chosen so that no two labels share a shape.  A letter that
# Latin, Greek and Cyrillic share is taken once, as Latin (A, not Greek Alpha or
# Cyrillic A; likewise B E H K M N P T Y), or not at all (O, X, C); Greek Gamma, Pi and
# Phi are taken, not their Cyrillic twins.  Of case pairs of one shape (c C, o O, s S,
# k K, u U, v V, w W, x X, z Z, Cyrillic Ж ж..., Greek π Π, θ Θ, φ Φ, ψ Ψ) one or
# neither is taken; I l 1, Greek alpha (an italic a), gamma (a y) and nu (a v) are
# left out.  Kana that equal a kanji (ロ 口, エ 工, カ 力, ニ 二, ハ 八, タ 夕, ト 卜) or
# the other kana's twin (へ ヘ, り リ, き キ, も モ...) are left out, as is Arabic alif
# (a bare stroke).
SCRIPTS: dict[str, str] = {
    "latin": "ABDEFGHJKLMNPQRTUY" + "abdefghijmnqrty",
    "greek": "ΓΔΘΛΞΠΣΦΨΩ" + "βδεζηλμξσω",
    "cyrillic": "БДЖЗИЙЦЧШЩЫЭЮЯб",
    "kana": "あいうえおかくけさすたちなぬのはふまむゆ" + "アウオクケコサシスソチテナネフホマムメヨ",
    "kanji": "人山水火木日月大小中上下目手足耳心天地田雨石花竹米糸金土王子女男林森川空白百東西南北",
    "hangul": "가나다라마바사아자하고노도로모보소오호구누두무수한국글말별꽃봄",
    "devanagari": "अइउएओकखगचजझटठडणतथदधनपफबमयरलशसह",
    "arabic": "بتجخدرزسشصطعفقكلمنهوي",
}


@dataclass(frozen=True)
class FontPackage:
    package: str
    license: str
    prefixes: tuple[str, ...]  # member paths (or their beginnings) of the fonts used
    exclude: tuple[str, ...] = ()  # fnmatch patterns of file names not used


_F = "usr/share/fonts/"
FONT_PACKAGES: tuple[FontPackage, ...] = (
    # Latin, Greek, Cyrillic (and every other font's Latin letters)
    FontPackage("fonts-dejavu-core", "Bitstream-Vera and public-domain",
                (_F + "truetype/dejavu/",)),
    FontPackage("fonts-liberation2", "OFL-1.1", (_F + "truetype/liberation2/",)),
    FontPackage("fonts-freefont-ttf", "GPL-3+ with font exception",
                (_F + "truetype/freefont/",)),
    FontPackage("fonts-urw-base35", "AGPL-3 with font exception",
                (_F + "opentype/urw-base35/",), ("D050000L*", "StandardSymbolsPS*")),
    FontPackage("fonts-noto-core", "OFL-1.1",
                tuple(_F + "truetype/noto/" + p for p in (
                    "NotoSans-", "NotoSerif-", "NotoSansDevanagari-", "NotoSerifDevanagari-",
                    "NotoSansArabic-", "NotoNaskhArabic-", "NotoKufiArabic-",
                    "NotoNastaliqUrdu-Regular")),),
    FontPackage("fonts-gfs-didot", "OFL-1.1", (_F + "opentype/didot/",)),
    FontPackage("fonts-gfs-artemisia", "OFL-1.1", (_F + "opentype/artemisia/",)),
    FontPackage("fonts-cmu", "OFL-1.1", (_F + "truetype/cmu/",)),
    FontPackage("fonts-linuxlibertine", "GPL-2+ with font exception or OFL-1.1",
                (_F + "opentype/linux-libertine/",),
                ("LinBiolinum_K*", "LinLibertine_I*")),  # key caps; ornate initials
    FontPackage("fonts-open-sans", "Apache-2.0", (_F + "truetype/open-sans/",)),
    FontPackage("fonts-roboto-unhinted", "Apache-2.0", (_F + "truetype/roboto/unhinted/",)),
    FontPackage("fonts-paratype", "ParaType-Free-Font-License", (_F + "truetype/paratype/",)),
    # Japanese and Chinese
    FontPackage("fonts-ipafont-gothic", "IPA-1", (_F + "opentype/ipafont-gothic/ipag.ttf",)),
    FontPackage("fonts-ipafont-mincho", "IPA-1", (_F + "opentype/ipafont-mincho/ipam.ttf",)),
    FontPackage("fonts-ipaexfont-gothic", "IPA-1", (_F + "opentype/ipaexfont-gothic/",)),
    FontPackage("fonts-ipaexfont-mincho", "IPA-1", (_F + "opentype/ipaexfont-mincho/",)),
    FontPackage("fonts-vlgothic", "M+ and Sazanami and BSD-3-Clause",
                (_F + "truetype/vlgothic/VL-Gothic-",)),
    FontPackage("fonts-motoya-l-cedar", "Apache-2.0", (_F + "truetype/motoya-l-cedar/",)),
    FontPackage("fonts-motoya-l-maruberi", "Apache-2.0",
                (_F + "truetype/motoya-l-maruberi/",)),
    FontPackage("fonts-sawarabi-gothic", "CC-BY-3.0", (_F + "truetype/sawarabi-gothic/",)),
    FontPackage("fonts-sawarabi-mincho", "CC-BY-SA-3.0 or OFL-1.1",
                (_F + "truetype/sawarabi-mincho/",)),
    FontPackage("fonts-konatu", "MIT", (_F + "truetype/konatu/Konatu.ttf",)),
    FontPackage("fonts-umeplus", "M+ and BSD-3-Clause",
                (_F + "truetype/umeplus/umeplus-gothic",)),
    FontPackage("fonts-droid-fallback", "Apache-2.0",
                (_F + "truetype/droid/DroidSansFallbackFull",)),
    FontPackage("fonts-wqy-zenhei", "GPL-2 with font embedding exception",
                (_F + "truetype/wqy/",)),
    FontPackage("fonts-arphic-ukai", "Arphic-Public-License", (_F + "truetype/arphic/",)),
    FontPackage("fonts-arphic-uming", "Arphic-Public-License", (_F + "truetype/arphic/",)),
    FontPackage("fonts-noto-cjk", "OFL-1.1", (_F + "opentype/noto/",)),
    FontPackage("fonts-dejima-mincho", "MIT", (_F + "truetype/dejima-mincho/",)),
    FontPackage("fonts-kiloji", "BSD-3-Clause",
                (_F + "truetype/kiloji/kiloji.ttf", _F + "truetype/kiloji/kiloji_b.ttf")),
    # Korean
    FontPackage("fonts-unfonts-core", "GPL-2", (_F + "truetype/unfonts-core/",)),
    FontPackage("fonts-unfonts-extra", "GPL-2", (_F + "truetype/unfonts-extra/",),
                ("UnJamo*",)),
    FontPackage("fonts-nanum", "OFL-1.1", (_F + "truetype/nanum/",), ("*Coding*",)),
    FontPackage("fonts-baekmuk", "Baekmuk (MIT-like)", (_F + "truetype/baekmuk/",)),
    FontPackage("fonts-alee", "Artistic", (_F + "truetype/alee/",),
                ("Guseul*",)),  # draws Hanja as their Hangul readings
    FontPackage("fonts-lexi-gulim", "GPL-2", (_F + "truetype/lexi/",)),
    FontPackage("fonts-lexi-saebom", "GPL-2", (_F + "truetype/lexi/",)),
    # Devanagari
    FontPackage("fonts-lohit-deva", "OFL-1.1", (_F + "truetype/lohit-devanagari/",)),
    FontPackage("fonts-gargi", "GPL-2+", (_F + "truetype/Gargi/",)),
    FontPackage("fonts-sarai", "GPL-2", (_F + "truetype/Sarai/",)),
    FontPackage("fonts-samyak-deva", "GPL-3+ with font exception", (_F + "truetype/samyak/",)),
    FontPackage("fonts-deva-extra", "GPL-2+", (_F + "truetype/fonts-deva-extra/",)),
    FontPackage("fonts-sil-annapurna", "OFL-1.1", (_F + "truetype/annapurna/",)),
    FontPackage("fonts-aksharyogini2", "OFL-1.1", (_F + "truetype/fonts-aksharyogini2/",)),
    FontPackage("fonts-nakula", "GPL-2+", (_F + "truetype/Nakula/",)),
    FontPackage("fonts-sahadeva", "GPL-2+", (_F + "truetype/Sahadeva/",)),
    # Arabic
    FontPackage("fonts-kacst", "GPL-2", (_F + "truetype/kacst/",), ("mry_*",)),
    FontPackage("fonts-kacst-one", "GPL-2", (_F + "truetype/kacst-one/",)),
    FontPackage("fonts-hosny-amiri", "OFL-1.1", (_F + "opentype/fonts-hosny-amiri/",),
                ("AmiriQuran*",)),
    FontPackage("fonts-sil-scheherazade", "OFL-1.1", (_F + "truetype/scheherazade/",)),
    FontPackage("fonts-arabeyes", "GPL-2", (_F + "truetype/fonts-arabeyes/",),
                ("ae_Haramain*",)),  # every letter inside one ornamental frame
    FontPackage("fonts-farsiweb", "GPL-2", (_F + "truetype/farsiweb/",)),
    FontPackage("fonts-lemonada", "OFL-1.1", (_F + "opentype/lemonada/",)),
    FontPackage("fonts-sil-harmattan", "OFL-1.1", (_F + "truetype/harmattan/",)),
    FontPackage("fonts-sil-lateef", "OFL-1.1", (_F + "opentype/lateef/",)),
)
FONT_EXT = (".ttf", ".otf", ".ttc")


@dataclass(frozen=True)
class Face:
    path: str  # the font file, unpacked into the scratch folder (of a .ttc: its first face)
    package: str
    name: str  # file name without extension


@dataclass(frozen=True)
class Coverage:
    family: str
    masks: dict[str, str]  # character -> hash of its rendering, for the covered ones


def _ink_mask(font: ImageFont.FreeTypeFont, ch: str, size: int) -> np.ndarray | None:
    """The rendering of ch cropped to its ink, or None if it draws nothing."""
    canvas = Image.new("L", (size * 3, size * 3), 0)
    ImageDraw.Draw(canvas).text((size * 1.5, size * 1.5), ch, font=font, fill=255,
                                anchor="mm")
    a = np.asarray(canvas)
    ys, xs = np.nonzero(a > 32)
    if len(xs) == 0:
        return None
    return a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _mask_hash(m: np.ndarray) -> str:
    return hashlib.sha1(struct.pack("<2I", *m.shape) + m.tobytes()).hexdigest()


def scan_face(path: str) -> Coverage | None:
    """Which characters of SCRIPTS the font really draws (worker process)."""
    try:
        font = ImageFont.truetype(path, SCAN_SIZE, layout_engine=ImageFont.Layout.BASIC)
    except OSError:
        return None
    # Unassigned code points draw the font's .notdef glyph (tofu), or nothing.
    tofu = {_mask_hash(m) for cp in (0x0378, 0x0E3B, 0xFFFF, 0x10FFFD)
            if (m := _ink_mask(font, chr(cp), SCAN_SIZE)) is not None}
    masks: dict[str, str] = {}
    for chars in SCRIPTS.values():
        for ch in chars:
            m = _ink_mask(font, ch, SCAN_SIZE)
            if m is None or max(m.shape) < SCAN_SIZE // 8:
                continue
            h = _mask_hash(m)
            if h not in tofu:
                masks[ch] = h
    # A shape drawn for several different characters is a substitute, not their glyph.
    repeated = {h for h, n in Counter(masks.values()).items() if n > 1}
    family = font.getname()[0] or Path(path).stem
    return Coverage(family, {ch: h for ch, h in masks.items() if h not in repeated})


@dataclass(frozen=True)
class GlyphJob:
    label: str
    char: str
    faces: tuple[Face, ...]


_FONT_CACHE: dict[str, ImageFont.FreeTypeFont] = {}


def _font(path: str) -> ImageFont.FreeTypeFont:
    if path not in _FONT_CACHE:
        _FONT_CACHE[path] = ImageFont.truetype(path, RENDER_SIZE,
                                               layout_engine=ImageFont.Layout.BASIC)
    return _FONT_CACHE[path]


PAPER_TINTS = (
    (244, 238, 222),  # cream
    (238, 229, 204),  # warm ivory
    (232, 218, 186),  # aged, yellowed
    (246, 245, 240),  # near white
    (226, 232, 236),  # cool blue-grey
    (220, 228, 218),  # cool green-grey
    (214, 213, 208),  # grey recycled
    (236, 224, 220),  # pinkish
)
INKS = (
    (22, 22, 26),  # black
    (24, 30, 66),  # blue-black
    (28, 48, 118),  # blue
    (72, 46, 28),  # sepia
    (104, 26, 28),  # dark red
    (26, 62, 40),  # dark green
    (58, 58, 64),  # graphite
    (60, 30, 80),  # violet
)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _smooth_noise(rng: np.random.Generator, cells: int, size: int) -> np.ndarray:
    small = Image.fromarray(_noise(rng, (cells, cells), 1.0), "F")
    return np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))


def paper(rng: np.random.Generator, size: int) -> np.ndarray:
    """A paper-like ground: tint, mottling, grain, fibres, stains, maybe a vignette.

    Float32 (size, size, 3), 0..255.  The effects are summed on one lightness plane,
    which the tint then colours, so that a sample costs a few milliseconds.
    """
    tint = np.array(PAPER_TINTS[rng.integers(len(PAPER_TINTS))], np.float32)
    tint += _noise(rng, (3,), 4) + _noise(rng, (1,), 5)
    light = np.zeros((size, size), np.float32)
    for cells, amp in ((4, rng.uniform(3, 9)), (12, rng.uniform(2, 5)), (48, rng.uniform(1, 3))):
        light += np.float32(amp) * _smooth_noise(rng, cells, size)
    grain = Image.fromarray(_noise(rng, (size // 2, size // 2), rng.uniform(1.5, 4.5)), "F")
    light += np.asarray(grain.resize((size, size), Image.Resampling.BILINEAR))
    light += _noise(rng, (size, size), rng.uniform(1.0, 3.0))
    fibres = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(fibres)
    for _ in range(int(rng.integers(12, 60))):
        x, y = rng.uniform(0, size, 2)
        angle, length = rng.uniform(0, math.pi), rng.uniform(6, 45)
        bend = rng.normal(0, 1.2, (4, 2))
        points = [(float(x + t * length * math.cos(angle) + bx),
                   float(y + t * length * math.sin(angle) + by))
                  for t, (bx, by) in zip((0, 1 / 3, 2 / 3, 1), bend, strict=True)]
        draw.line(points, fill=int(rng.integers(60, 200)), width=1)
    fib = np.asarray(fibres.filter(ImageFilter.GaussianBlur(0.6)), np.float32)
    light += fib * np.float32(rng.uniform(6, 18) / 255 * (1 if rng.random() < 0.5 else -1))
    yy, xx = np.ogrid[0:size, 0:size]
    stains = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(0, 4))):  # stains and blotches, brownish
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(size * 0.04, size * 0.25)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2).astype(np.float32)
        stains += np.exp(d2 * np.float32(-1 / (2 * r * r))) * np.float32(rng.uniform(0.3, 1.2))
    colour = 1 + _noise(rng, (3,), 0.12)  # the mottling is not quite grey either
    img = (tint + light[..., None] * colour
           - stains[..., None] * np.array((6, 12, 22), np.float32))
    if rng.random() < 0.6:  # vignette
        r2 = (((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size * size / 2)).astype(np.float32)
        img *= (1 - np.float32(rng.uniform(0.04, 0.18)) * r2)[..., None]
    return img


def render_glyph(font: ImageFont.FreeTypeFont, ch: str, rng: np.random.Generator) -> bytes:
    """One sample: ch in font, jittered, in ink on paper; JPEG bytes."""
    mask = _ink_mask(font, ch, RENDER_SIZE)
    assert mask is not None
    size = GLYPH_SIZE
    glyph = Image.fromarray(mask, "L")
    scale = rng.uniform(0.55, 0.8) * size / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                         Image.Resampling.LANCZOS)
    glyph = glyph.rotate(float(rng.uniform(-6, 6)), Image.Resampling.BICUBIC, expand=True)
    if max(glyph.size) > size - 8:
        glyph = ImageOps.contain(glyph, (size - 8, size - 8), Image.Resampling.LANCZOS)
    glyph = glyph.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    layer = Image.new("L", (size, size), 0)
    # Near the middle, as a character on a card: a little off centre at most.
    x = int(np.clip((size - glyph.width) / 2 + rng.uniform(-0.06, 0.06) * size,
                    4, size - glyph.width - 4))
    y = int(np.clip((size - glyph.height) / 2 + rng.uniform(-0.06, 0.06) * size,
                    4, size - glyph.height - 4))
    layer.paste(glyph, (x, y))
    ground = paper(rng, size)
    ink = np.array(INKS[rng.integers(len(INKS))], np.float32) + _noise(rng, (3,), 8)
    # ink that is a little uneven: denser in some places than in others
    density = np.float32(rng.uniform(0.82, 0.97) / 255) * (
        1 - np.float32(0.08) * np.minimum(np.abs(_smooth_noise(rng, 16, size)), 2))
    alpha = (np.asarray(layer, np.float32) * density)[..., None]
    out = ground + (ink - ground) * alpha + _noise(rng, (size, size, 1), 1.5)
    image = Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")
    return encode(image, "JPEG", quality=90)


def render_glyph_job(job: GlyphJob) -> list[tuple[str, bytes]]:
    """The samples of one character (worker process): (file name, JPEG bytes)."""
    out = []
    for n, face in enumerate(job.faces):
        rng = rng_of("glyph", job.label, face.package, face.name)
        out.append((f"{n:02d}_{safe(face.name)}.jpg", render_glyph(_font(face.path), job.char,
                                                                     rng)))
    return out


def pick_styles(char: str, faces: list[tuple[Face, str]]) -> list[Face]:
    """Up to MAX_STYLES faces for char, spread over as many families as there are."""
    rng = random.Random(seed_of("styles", char))
    families: dict[str, list[Face]] = defaultdict(list)
    for face, family in sorted(faces, key=lambda f: (f[1], f[0].package, f[0].name)):
        families[family].append(face)
    order = sorted(families)
    rng.shuffle(order)
    for family in order:
        rng.shuffle(families[family])
    chosen: list[Face] = []
    depth = 0
    while len(chosen) < MAX_STYLES and any(len(families[f]) > depth for f in order):
        chosen += [families[f][depth] for f in order if len(families[f]) > depth]
        depth += 1
    return chosen[:MAX_STYLES]


def build_glyphs(ctx: Context, dom: Domain) -> None:
    font_dir = ctx.scratch / "fonts"
    faces: list[Face] = []
    seen: set[bytes] = set()
    for fp in FONT_PACKAGES:
        pkg = ctx.fetch(fp.package, fp.prefixes)
        dom.add_package(pkg, fp.license)
        for member in pkg.files():
            base = member.rsplit("/", 1)[-1]
            if not base.lower().endswith(FONT_EXT) or any(fnmatch(base, p) for p in fp.exclude):
                continue
            data = pkg.data(member)
            assert data is not None
            digest = hashlib.sha1(data).digest()
            if digest in seen:
                continue
            seen.add(digest)
            path = font_dir / fp.package / base
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            faces.append(Face(str(path), fp.package, base.rsplit(".", 1)[0]))
        pkg.members.clear()
    print(f"  {len(faces)} font faces from {len(FONT_PACKAGES)} packages; scanning coverage",
          flush=True)
    coverage = list(ctx.map(scan_face, [f.path for f in faces], chunksize=4))
    by_char: dict[str, list[tuple[Face, str, str]]] = defaultdict(list)
    for face, cov in zip(faces, coverage, strict=True):
        if cov is None:
            dom.notes.append(f"font not loadable: {face.package} {face.name}")
            continue
        for ch, mask in cov.masks.items():
            by_char[ch].append((face, cov.family, mask))
    jobs: list[GlyphJob] = []
    part_of: dict[str, str] = {}
    dropped: list[str] = []
    for script, chars in SCRIPTS.items():
        labels = {}
        for ch in chars:
            # identical renderings (one design under two names) count once
            unique: dict[str, tuple[Face, str]] = {}
            for face, family, mask in by_char[ch]:
                unique.setdefault(mask, (face, family))
            styles = pick_styles(ch, list(unique.values()))
            if len(styles) < MIN_STYLES:
                dropped.append(f"{ch} U+{ord(ch):04X} ({len(styles)} fonts)")
                continue
            label = f"{script}_{ord(ch):04X}"
            labels[label] = ch
            jobs.append(GlyphJob(label, ch, tuple(styles)))
        part_of.update(alternate(labels, "glyphs", script, heldout_every=3))
    if dropped:
        dom.notes.append("characters left out (fewer than "
                         f"{MIN_STYLES} fonts draw them): {', '.join(dropped)}")
    print(f"  rendering {len(jobs)} characters, "
          f"{sum(len(j.faces) for j in jobs)} images", flush=True)
    for job, samples in zip(jobs, ctx.map(render_glyph_job, jobs), strict=True):
        for (name, data), face in zip(samples, job.faces, strict=True):
            dom.write(part_of[job.label], job.label, name, data, face.package)
    table = ["# label\tcharacter\tpart\tfonts"]
    table += [f"{j.label}\t{j.char}\t{part_of[j.label]}\t{len(j.faces)}" for j in jobs]
    (dom.work / "LABELS.txt").write_text("\n".join(table) + "\n")
    for row in list(dom.rows.values()):
        if not row.counts:
            dom.notes.append(f"{row.package}: no font of it was picked")


GLYPHS_ABOUT = f"""\
One label per character (LABELS.txt: label, character, part, number of fonts);
each sample the character in another font (file name: its index and the font),
random size, a position near the middle, a slant (+-6 degrees), dark ink of a
random colour on a paper-like ground; {GLYPH_SIZE}x{GLYPH_SIZE} RGB JPEG (quality 90).
Fonts are spread over families; a font is not used for a character it draws as tofu,
as nothing, or as a shape it draws for another character too.
2/3 of each script dev, 1/3 heldout."""


# --------------------------------------------------------------------------
# photos

MAX_SIDE = 1024


@dataclass(frozen=True)
class PhotoSource:
    package: str
    license: str
    prefix: str  # the folder read
    short: str  # label prefix
    pick: Callable[[list[str]], dict[str, str]]  # member paths -> {name: member}


def _stem(member: str) -> str:
    return member.rsplit("/", 1)[-1].rsplit(".", 1)[0]


def _named(names: Iterable[str]) -> Callable[[list[str]], dict[str, str]]:
    """The members whose stem is one of names."""
    wanted = set(names)

    def pick(members: list[str]) -> dict[str, str]:
        return {_stem(m): m for m in members if _stem(m) in wanted}

    return pick


def _all_raster(skip: Iterable[str] = ()) -> Callable[[list[str]], dict[str, str]]:
    unwanted = set(skip)

    def pick(members: list[str]) -> dict[str, str]:
        return {_stem(m): m for m in members
                if m.lower().endswith((".jpg", ".jpeg", ".png", ".webp"))
                and _stem(m) not in unwanted}

    return pick


def _plasma(keep: Iterable[str]) -> Callable[[list[str]], dict[str, str]]:
    """Plasma wallpaper packages: the largest light-theme image of each wanted one."""
    wanted = set(keep)

    def pick(members: list[str]) -> dict[str, str]:
        best: dict[str, tuple[int, str]] = {}
        for m in members:
            parts = m.split("/")
            # usr/share/wallpapers/<name>/contents/images/<width>x<height>.<ext>
            if len(parts) != 7 or parts[3] not in wanted or parts[4:6] != ["contents", "images"]:
                continue
            sm = re.match(r"(\d+)x(\d+)\.", parts[6])
            if sm:
                pixels = int(sm.group(1)) * int(sm.group(2))
                if parts[3] not in best or pixels > best[parts[3]][0]:
                    best[parts[3]] = (pixels, m)
        return {name: m for name, (_, m) in best.items()}

    return pick


# Vector and flat-colour art, and the second of each light/dark or colour variant, are
# left out by choosing what to take from each package (what is named is what is used).
PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("endless-sky-data", "public domain (morgueFile) or CC-BY-SA-3.0/4.0 "
                "(credited photographers)", "usr/share/games/endless-sky/images/land/", "es",
                _all_raster()),
    PhotoSource("python3-skimage", "CC0 or public domain (skimage.data)",
                "usr/lib/python3/dist-packages/skimage/data/", "skimage",
                _named(("astronaut", "camera", "chelsea", "clock_motion", "coffee", "coins",
                        "hubble_deep_field", "ihc", "moon", "motorcycle_left", "page",
                        "retina", "rocket", "text"))),
    PhotoSource("wesnoth-1.16-data", "GPL-2+",
                "usr/share/games/wesnoth/1.16/data/core/images/story/", "wesnoth",
                _all_raster(skip=("landscape-battlefield_nohumans", "landscape-bridge_sun"))),
    PhotoSource("mate-backgrounds", "GPL-2+ or CC-BY-SA-4.0", "usr/share/backgrounds/mate/",
                "mate",
                _named(("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow",
                        "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
                        "Elephants", "Gulp", "Float-into-MATE", "Ubuntu-Mate-Warm-no-logo"))),
    PhotoSource("gnome-backgrounds", "CC-BY-SA-3.0", "usr/share/backgrounds/gnome/", "gnome",
                _named(("adwaita-l", "grid-l", "licorice-l", "pixels-l", "wood-l"))),
    PhotoSource("ukui-wallpapers", "CC-BY-SA-3.0", "usr/share/backgrounds/", "ukui",
                _named(("2004default", "fluent-color", "goldfish", "rhythm", "string"))),
    PhotoSource("plasma-workspace-wallpapers", "GPL-2+", "usr/share/wallpapers/", "plasma",
                _plasma(("Altai", "Autumn", "BytheWater", "Canopee", "Cascade", "Cluster",
                         "ColorfulCups", "EveningGlow", "FallenLeaf", "Honeywave", "Kite",
                         "Kokkini", "MilkyWay", "OneStandsOut", "Opal", "Patak", "Path",
                         "SafeLanding", "Shell", "Volna", "summer_1am"))),
    PhotoSource("lxqt-themes", "CC-BY-SA-3.0 or LGPL-2.1+/LGPL-3", "usr/share/lxqt/wallpapers/",
                "lxqt",
                _named(("Butterfly-Kenneth-Wimer", "Valendas", "after-the-rain", "appleflower",
                        "beam", "butterfly", "cloud", "drop", "flowers", "fog", "kde-plasma",
                        "plasma_arch", "this-is-not-windows"))),
)

# name -> (what is done, file format); the kinds a photo collection holds.
COPY_KINDS: dict[str, str] = {
    "downscale50.jpg": "50% of the size",
    "jpeg30.jpg": "JPEG quality 30",
    "webp50.webp": "WebP quality 50",
    "thumb320.png": "long side 320 px",
    "crop80.jpg": "centred crop keeping 80% of each side",
    "crop60.jpg": "centred crop keeping 60% of each side",
    "bright.jpg": "brightness x1.35, then contrast x1.2",
    "gray.jpg": "grayscale",
    "blur3.jpg": "Gaussian blur, radius 3",
    "rotate5.jpg": "rotated 5 degrees (same size, black corners)",
    "overlay.jpg": "a caption bar with text along the bottom, a logo box in a corner",
    "mirror.jpg": "left-right mirror",
}
COPY_QUALITY = 90  # of the JPEG copies other than jpeg30


@dataclass(frozen=True)
class Original:
    jpeg: bytes
    dhash: int


DHASH_SIDE = 16  # a 256-bit difference hash
DHASH_NEAR = 8  # bits: at most this many differ between two copies of one picture


def dhash(im: Image.Image) -> int:
    """A difference hash: which of each two neighbours is brighter on a 17x16 thumbnail."""
    a = np.asarray(im.convert("L").resize((DHASH_SIDE + 1, DHASH_SIDE),
                                          Image.Resampling.BILINEAR), np.int16)
    return int.from_bytes(np.packbits(a[:, 1:] > a[:, :-1]).tobytes(), "big")


def make_original(data: bytes) -> Original | None:
    """The original of a photo: long side at most MAX_SIDE, JPEG q95 (worker process)."""
    try:
        source = Image.open(io.BytesIO(data))
        w, h = source.size
        f = min(1.0, MAX_SIDE / max(w, h))
        source.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))  # JPEG: decode at 1/2, 1/4
        im = flatten(ImageOps.exif_transpose(source))
    except Exception:  # noqa: BLE001 - unreadable image: skip it
        return None
    if max(im.size) > MAX_SIDE:
        im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return Original(encode(im, "JPEG", quality=95), dhash(im))


def _overlay(im: Image.Image, rng: random.Random) -> Image.Image:
    out = im.copy()
    w, h = out.size
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    bar = max(16, h // 9)
    draw.rectangle((0, h - bar, w, h), fill=(0, 0, 0, 150))
    font = ImageFont.load_default(size=max(10, int(bar * 0.55)))
    caption = rng.choice(("Holiday 2019 - best of", "Shared via PhotoBox", "Wallpaper of the day",
                          "(c) my collection", "Family album, page 12", "Sent from my phone"))
    draw.text((bar // 3, h - bar / 2), f"{caption}  #{rng.randrange(100, 10000)}", font=font,
              fill=(255, 255, 255, 235), anchor="lm")
    side = max(24, min(w, h) // 6)
    x0, y0 = (w - side - side // 4, side // 4) if rng.random() < 0.5 else (side // 4, side // 4)
    colour = rng.choice(((220, 40, 40), (30, 110, 220), (250, 180, 20), (40, 160, 90)))
    draw.rounded_rectangle((x0, y0, x0 + side, y0 + side), radius=side // 6,
                           fill=(*colour, 230), outline=(255, 255, 255, 255),
                           width=max(1, side // 20))
    draw.ellipse((x0 + side // 4, y0 + side // 4, x0 + 3 * side // 4, y0 + 3 * side // 4),
                 fill=(255, 255, 255, 230))
    logo_font = ImageFont.load_default(size=max(8, side // 4))
    draw.text((x0 + side / 2, y0 + side / 2), "LA", font=logo_font, fill=(*colour, 255),
              anchor="mm")
    return Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")


def make_copies(job: tuple[str, bytes]) -> list[tuple[str, bytes]]:
    """original.jpg and its copies, in COPY_KINDS order (worker process)."""
    label, original = job
    im = Image.open(io.BytesIO(original)).convert("RGB")
    w, h = im.size
    rng = random.Random(seed_of("overlay", label))
    q = COPY_QUALITY

    def jpeg(x: Image.Image, quality: int = q) -> bytes:
        return encode(x, "JPEG", quality=quality)

    def crop(keep: float) -> Image.Image:
        cw, ch = round(w * keep), round(h * keep)
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.crop((left, top, left + cw, top + ch))

    half = im.resize((max(1, round(w / 2)), max(1, round(h / 2))), Image.Resampling.LANCZOS)
    thumb = im.copy()
    thumb.thumbnail((320, 320), Image.Resampling.LANCZOS)
    bright = ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.35)).enhance(1.2)
    copies = {
        "downscale50.jpg": jpeg(half),
        "jpeg30.jpg": jpeg(im, 30),
        "webp50.webp": encode(im, "WEBP", quality=50),
        "thumb320.png": encode(thumb, "PNG", optimize=True),
        "crop80.jpg": jpeg(crop(0.8)),
        "crop60.jpg": jpeg(crop(0.6)),
        "bright.jpg": jpeg(bright),
        "gray.jpg": jpeg(im.convert("L")),
        "blur3.jpg": jpeg(im.filter(ImageFilter.GaussianBlur(3))),
        "rotate5.jpg": jpeg(im.rotate(5, Image.Resampling.BICUBIC, expand=False)),
        "overlay.jpg": jpeg(_overlay(im, rng)),
        "mirror.jpg": jpeg(ImageOps.mirror(im)),
    }
    assert list(copies) == list(COPY_KINDS)
    return [("original.jpg", original), *copies.items()]


def build_photos(ctx: Context, dom: Domain) -> None:
    candidates: list[tuple[str, str, bytes]] = []  # (label, package, data)
    for src in PHOTO_SOURCES:
        pkg = ctx.fetch(src.package, (src.prefix,))
        dom.add_package(pkg, src.license)
        picked = src.pick(pkg.files())
        for name in sorted(picked):
            data = pkg.data(picked[name])
            if data is not None:
                candidates.append((f"{src.short}-{safe(name).lower()}", src.package, data))
        pkg.members.clear()
        print(f"  {src.package} {pkg.version}: {len(picked)} images", flush=True)
    originals = list(ctx.map(make_original, [c[2] for c in candidates], chunksize=4))
    kept: dict[str, tuple[str, Original]] = {}
    hashes: list[tuple[int, str]] = []
    for (label, package, _), orig in zip(candidates, originals, strict=True):
        if orig is None:
            dom.notes.append(f"unreadable, left out: {label}")
            continue
        if label in kept:
            raise SuiteError(f"photos: two originals named {label}")
        twin = next((other for h, other in hashes if (h ^ orig.dhash).bit_count() <= DHASH_NEAR),
                    None)
        if twin is not None:
            dom.notes.append(f"near-duplicate of {twin}, left out: {label}")
            continue
        hashes.append((orig.dhash, label))
        kept[label] = (package, orig)
    part_of: dict[str, str] = {}
    for src in PHOTO_SOURCES:
        part_of.update(alternate([lb for lb, (p, _) in kept.items() if p == src.package],
                                 "photos", src.package))
    labels = sorted(kept)
    jobs = [(label, kept[label][1].jpeg) for label in labels]
    print(f"  making copies of {len(jobs)} originals", flush=True)
    for label, files in zip(labels, ctx.map(make_copies, jobs, chunksize=2), strict=True):
        for name, data in files:
            dom.write(part_of[label], label, name, data, kept[label][0])


PHOTOS_ABOUT = f"""\
Copy detection. Each label is one original: original.jpg (long side at most {MAX_SIDE}
px, JPEG quality 95) and its 12 copies, named by kind (JPEG copies at quality
{COPY_QUALITY}):
""" + "\n".join(f"  {name:<16} {what}" for name, what in COPY_KINDS.items()) + f"""
Originals whose 256-bit difference hash is within {DHASH_NEAR} bits of an earlier one are
left out (a copy of a picture already taken). Half of each package's originals dev,
half heldout."""


# --------------------------------------------------------------------------
# textures

TEXTURE_SIZE = 128
TEXTURE_SAMPLES = 10
TEXTURE_MIN_SIDE = 40


@dataclass(frozen=True)
class TextureSource:
    package: str
    license: str
    prefix: str
    short: str
    tileable: bool  # a seamless tile (wrapped) or a photograph of a surface (mirrored)
    names: tuple[str, ...] = ()  # only these stems (default: every pattern)


TEXTURE_SOURCES: tuple[TextureSource, ...] = (
    TextureSource("gimp-data", "GPL-3+ (GIMP data)", "usr/share/gimp/2.0/patterns/", "gimp",
                  True),
    TextureSource("gimp-data-extras", "GPL-2+", "usr/share/gimp/2.0/patterns/", "gimpx", True),
    TextureSource("krita-data", "GPL-2+ and LGPL (Krita resources)", "usr/share/krita/patterns/",
                  "krita", True),
    TextureSource("python3-skimage", "CC0 (skimage.data, from CC0Textures)",
                  "usr/lib/python3/dist-packages/skimage/data/", "skimage", False,
                  ("brick", "grass", "gravel")),
)


def read_pattern(data: bytes, name: str) -> Image.Image:
    """A GIMP .pat pattern (Pillow reads no .pat) or any image Pillow reads, flattened."""
    if name.endswith(".pat"):
        header, version, w, h, depth = struct.unpack(">5I", data[:20])
        if data[20:24] != b"GPAT" or depth not in (1, 2, 3, 4):
            raise ValueError("not a GIMP pattern")
        pixels = np.frombuffer(data[header:header + w * h * depth], np.uint8)
        pixels = pixels.reshape(h, w, depth)
        mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[depth]
        return flatten(Image.fromarray(pixels if depth > 1 else pixels[..., 0], mode))
    im = Image.open(io.BytesIO(data))
    im.load()
    return flatten(im)


def texture_samples(job: tuple[str, bytes, bool]) -> list[tuple[str, bytes]]:
    """TEXTURE_SAMPLES crops of one texture (worker process): (file name, PNG bytes)."""
    label, png, tileable = job
    tile = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    th, tw = tile.shape[:2]
    if not tileable:  # mirror it, so that the edges meet
        tile = np.concatenate([tile, tile[::-1]], axis=0)
        tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
    # The texture: the tile repeated to at least 256 px; a sample is a crop of it.
    side = max(256, tw, th)
    canvas = np.tile(tile, (math.ceil(2 * side / tile.shape[0]) + 1,
                            math.ceil(2 * side / tile.shape[1]) + 1, 1))
    surface = Image.fromarray(canvas)
    out = []
    for k in range(TEXTURE_SAMPLES):
        rng = rng_of("texture", label, k)
        crop = rng.uniform(0.4, 0.9) * side
        angle = math.radians(rng.uniform(-12, 12))
        reach = crop * (abs(math.cos(angle)) + abs(math.sin(angle))) / 2
        cx = rng.uniform(reach, surface.width - reach)
        cy = rng.uniform(reach, surface.height - reach)
        c, s = math.cos(angle), math.sin(angle)
        n = max(TEXTURE_SIZE, round(crop))
        step = crop / n
        # output pixel (x, y) -> surface point centre + R(angle) . ((x, y) - n/2) * step
        coeffs = (c * step, -s * step, cx - (c - s) * crop / 2,
                  s * step, c * step, cy - (s + c) * crop / 2)
        patch = surface.transform((n, n), Image.Transform.AFFINE, coeffs,
                                  resample=Image.Resampling.BICUBIC)
        patch = patch.resize((TEXTURE_SIZE, TEXTURE_SIZE), Image.Resampling.LANCZOS)
        out.append((f"{k:02d}.png", encode(patch, "PNG", optimize=True)))
    return out


def build_textures(ctx: Context, dom: Domain) -> None:
    textures: list[tuple[str, str, bytes, bool]] = []  # (label, package, PNG, tileable)
    seen: set[bytes] = set()
    for src in TEXTURE_SOURCES:
        pkg = ctx.fetch(src.package, (src.prefix,))
        dom.add_package(pkg, src.license)
        n = 0
        for member in pkg.files():
            base = member.rsplit("/", 1)[-1]
            stem = base.rsplit(".", 1)[0]
            if not base.lower().endswith((".pat", ".png", ".jpg")):
                continue
            if src.names and stem not in src.names:
                continue
            data = pkg.data(member)
            assert data is not None
            try:
                im = read_pattern(data, base)
            except Exception:  # noqa: BLE001 - not a readable pattern: skip it
                dom.notes.append(f"unreadable, left out: {src.package} {member}")
                continue
            gray = np.asarray(im.convert("L"), np.float32)
            digest = hashlib.sha1(np.asarray(im).tobytes()).digest()
            if min(im.size) < TEXTURE_MIN_SIDE or gray.std() < 4 or digest in seen:
                continue
            seen.add(digest)
            label = f"{src.short}-{safe(stem).lower()}"
            textures.append((label, src.package, encode(im, "PNG"), src.tileable))
            n += 1
        pkg.members.clear()
        print(f"  {src.package} {pkg.version}: {n} textures", flush=True)
    twice = [name for name, n in Counter(t[0] for t in textures).items() if n > 1]
    if twice:
        raise SuiteError(f"textures: two textures named {', '.join(twice)}")
    part_of: dict[str, str] = {}
    for src in TEXTURE_SOURCES:
        part_of.update(alternate([t[0] for t in textures if t[1] == src.package],
                                 "textures", src.package))
    jobs = [(label, png, tileable) for label, _, png, tileable in textures]
    for (label, package, _, _), samples in zip(textures, ctx.map(texture_samples, jobs),
                                               strict=True):
        for name, data in samples:
            dom.write(part_of[label], label, name, data, package)


TEXTURES_ABOUT = f"""\
One label per pattern or texture (at least {TEXTURE_MIN_SIDE} px, not uniform, pixel-identical
ones once); {TEXTURE_SAMPLES} samples each: the tile repeated (mirrored, for photographs of
a surface) to a texture of at least 256 px, a random square of 40-90% of its side,
rotated by up to 12 degrees, resized to {TEXTURE_SIZE}x{TEXTURE_SIZE} RGB PNG. Half of
each package's textures dev, half heldout."""


# --------------------------------------------------------------------------

BUILDERS: dict[str, tuple[Callable[[Context, Domain], None], str]] = {
    "digits": (build_digits, DIGITS_ABOUT),
    "icons": (build_icons, ICONS_ABOUT),
    "glyphs": (build_glyphs, GLYPHS_ABOUT),
    "photos": (build_photos, PHOTOS_ABOUT),
    "textures": (build_textures, TEXTURES_ABOUT),
}


def build(out: Path, cache: Path, domains: list[str], workers: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in domains:  # refuse to replace a folder this script did not make
        root = out / name
        if root.exists() and any(root.iterdir()) and not (root / "kind").is_file():
            raise SuiteError(f"{root} is not empty and is not a domain made by this script")
    apt = Apt(cache)
    t0 = time.monotonic()
    done: list[Domain] = []
    with tempfile.TemporaryDirectory(prefix=".suite-", dir=out) as scratch:
        ctx = Context(apt, workers, Path(scratch))
        try:
            for name in domains:
                t = time.monotonic()
                print(f"{name}:", flush=True)
                dom = Domain(name, out / name)
                dom.start()
                builder, about = BUILDERS[name]
                builder(ctx, dom)
                dom.finish(about)
                done.append(dom)
                print(f"  {dom.summary()}  ({time.monotonic() - t:.0f} s)", flush=True)
        finally:
            ctx.close()
    print(f"wrote {', '.join(d.name for d in done)} to {out} in {time.monotonic() - t0:.0f} s")
    for dom in done:
        print(f"  {dom.summary()}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output directory (created; the domains built "
                    "replace their old folders there)")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory to keep downloaded .deb files in (default: temporary)")
    ap.add_argument("--domains", default=",".join(DOMAINS),
                    help=f"comma-separated, of {', '.join(DOMAINS)} (default: all)")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                    help="processes for the image work (default: CPUs, at most 4)")
    args = ap.parse_args(argv)
    domains = [d.strip() for d in args.domains.split(",") if d.strip()]
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown or not domains:
        ap.error(f"--domains: unknown {', '.join(unknown) or '(none given)'}; "
                 f"choose from {', '.join(DOMAINS)}")
    domains = [d for d in DOMAINS if d in domains]
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    return with_cache(args.cache, "suite-debs-",
                      lambda cache: build(args.out.resolve(), cache, domains, args.workers))


if __name__ == "__main__":
    sys.exit(main())
