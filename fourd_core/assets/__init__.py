"""Files shipped with the pack so every demo runs on a fresh install with no manual copying.

``example_coffee.jpg``: "Coffee cup" by Rachel Michetti (courtesy of Pikolo Espresso Bar), 600x400,
released under CC0 ("no copyright restrictions"), as distributed with scikit-image 0.26
(``skimage/data/coffee.png``, re-encoded as JPEG quality 92). Its 3:2 aspect is the 4DNeX training
aspect (480x720). See ``SOURCES.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
EXAMPLE_IMAGE = ASSETS / "example_coffee.jpg"
EXAMPLE_PROMPT_FILE = ASSETS / "example_coffee.txt"
EXAMPLE_PROMPT = EXAMPLE_PROMPT_FILE.read_text(encoding="utf-8").strip()


def example_image():
    """The shipped example photo as ``[H, W, 3]`` float32 in [0, 1] (400 x 600)."""
    from ..io.images import load_image

    return load_image(EXAMPLE_IMAGE)
