"""The example photo shipped with the pack, so the demo workflows run on a fresh install."""

from __future__ import annotations

from ..fourd_core.assets import EXAMPLE_IMAGE, EXAMPLE_PROMPT, example_image
from .types import CATEGORY


class FourDExampleImage:
    DESCRIPTION = ("The example photo shipped with the pack (a coffee cup, CC0, 600x400) and a prompt for it, so the "
                   "demo workflows need no file in ComfyUI's input folder. Replace it with a core Load Image node for "
                   "your own photo.")
    CATEGORY = f"{CATEGORY}/inputs"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "prompt")
    OUTPUT_TOOLTIPS = ("The photo as a one-image IMAGE batch.", "A prompt describing it (wire to the sampler's prompt).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"example": ([EXAMPLE_IMAGE.name], {
            "tooltip": "Which shipped photo (source and licence: fourd_core/assets/SOURCES.md)."})}}

    def load(self, example):
        return (example_image()[None], EXAMPLE_PROMPT)
