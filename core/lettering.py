"""Fonts for names in any script, for contact sheets.

Pillow's built-in font covers ASCII only: a Japanese file name drawn with
it is a row of empty boxes. `lettered(text)` says what to draw and with
which font: Pillow's own when it has every character's glyph; else a font
that fontconfig lists as covering them all (`fc-list`), the one `fc-match`
ranks first for sans-serif; where there is none (no fontconfig, no such
font), Pillow's own with each character it lacks written as \\uXXXX, which
says what the name is, never a box.
"""
from __future__ import annotations

import shutil
import subprocess
from functools import cache

from PIL import ImageFont

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

FONT_SIZE = 12
UNDRAWABLE = "\U0010fffd"  # a private code point no font draws: its glyph is the missing one


@cache
def builtin() -> Font:
    """Pillow's built-in font: nothing to install, the same on every machine."""
    return ImageFont.load_default(FONT_SIZE)


def lettered(text: str) -> tuple[str, Font]:
    """What to draw for `text` and the font to draw it with."""
    lacking = missing(text, builtin())
    if not lacking:
        return text, builtin()
    face = covering(frozenset(lacking))
    if face is not None:
        return text, face
    return escaped(text, lacking), builtin()


def missing(text: str, font: Font) -> set[str]:
    """The characters of `text` that `font` has no glyph for (it would draw its box)."""
    box = glyph(font, UNDRAWABLE)
    return {c for c in set(text) if not c.isspace() and ord(c) > 0x7e and glyph(font, c) == box}


def glyph(font: Font, character: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(character)
    return mask.size, bytes(mask)


def escaped(text: str, lacking: set[str]) -> str:
    return "".join(f"\\u{ord(c):04x}" if c in lacking and ord(c) <= 0xffff
                   else f"\\U{ord(c):08x}" if c in lacking else c for c in text)


@cache
def covering(characters: frozenset[str]) -> Font | None:
    """A system font with a glyph for each of `characters`, by fontconfig; None when none has."""
    if shutil.which("fc-list") is None or shutil.which("fc-match") is None:
        return None
    charset = "charset=" + " ".join(f"{ord(c):x}" for c in sorted(characters))
    try:
        whole = set(fontconfig("fc-list", f":{charset}"))
        ranked = fontconfig("fc-match", "-s", f"sans-serif:{charset}")
    except (OSError, subprocess.SubprocessError):
        return None
    for file, index in [*ranked, *sorted(whole)]:  # (fc-match's order first)
        if (file, index) in whole:
            try:
                return ImageFont.truetype(file, FONT_SIZE, index=index)
            except OSError:
                continue  # a font Pillow cannot read: the next one
    return None


def fontconfig(*command: str) -> list[tuple[str, int]]:
    """(file, index in the file) of each font a fontconfig command lists."""
    listed = subprocess.run([*command, "-f", "%{file}\t%{index}\n"], capture_output=True,
                            text=True, timeout=10, check=True).stdout
    fonts = []
    for line in listed.splitlines():
        file, _, index = line.partition("\t")
        if file:
            fonts.append((file, int(index or 0)))
    return fonts
