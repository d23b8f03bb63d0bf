"""The example photo shipped with the pack, so the demo workflows run on a fresh install."""

from __future__ import annotations

from ..fourd_core.assets import EXAMPLE_IMAGE, EXAMPLE_PROMPT, example_image
from .types import CATEGORY, SCENE


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


class FourDExampleScene:
    DESCRIPTION = ("A small 4D scene made from the shipped photo with no model and no download: the coffee cup on its "
                   "table given a depth layout (the table recedes, the cup rises over time) and a camera dolly, as a "
                   "4DNeX-style point map. Connect it where FourD Decode 6D's scene goes (FourD Recover Cameras, "
                   "splats, export, previews) to see what each node does in seconds on a CPU.")
    CATEGORY = f"{CATEGORY}/inputs"
    RETURN_TYPES = (SCENE, "IMAGE", "IMAGE")
    RETURN_NAMES = ("scene", "rgb_video", "xyz_video")
    OUTPUT_TOOLTIPS = ("The scene: RGB frames and point maps, no cameras yet (like FourD Decode 6D's).",
                       "The RGB frames (the photo in every frame).", "The point maps as colours (R = x, G = y, B = z).")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "frames": ("INT", {"default": 12, "min": 2, "max": 97, "tooltip": "Number of frames."}),
            "width": ("INT", {"default": 384, "min": 96, "max": 1024, "step": 8, "tooltip": "Image width in pixels; "
                              "the height is 2/3 of it (3:2, as the photo and 4DNeX)."}),
            "dolly": ("FLOAT", {"default": 0.06, "min": 0.0, "max": 0.5, "step": 0.01, "tooltip": "Camera move "
                                "forward per frame, in scene units (the table is about 2.4-5.5 units away)."}),
            "rise": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "How far the cup "
                               "rises by the last frame, as a fraction of its height (0 = a static scene)."}),
        }}

    def make(self, frames, width, dolly, rise):
        from ..fourd_core.example_scene import example_scene

        scene = example_scene(frames=frames, width=width, dolly=dolly, rise=rise).scene
        return (scene, scene.rgb, scene.xyz.clamp(0, 1))
