"""fourd_core: one image -> a 4D scene (dynamic point cloud, cameras, depth) and novel-view videos.

A ComfyUI-free library implementing 4DNeX (Wan2.1-I2V + LoRA, width-fused RGB/XYZ "6D video") and
4Real-Video / 4Real-Video-V2 grid sampling on diffusers. Entry points: :mod:`fourd_core.api`,
the CLI ``python -m fourd_core``, and the ComfyUI nodes in ``nodes/``.
"""

__version__ = "0.1.0"
