"""Core ComfyUI step caches (``comfy_extras/nodes_easycache.py``) seen from the native FourD patches.

EasyCache and LazyCache wrap the whole DiT call (EasyCache: the ``DIFFUSION_MODEL`` wrapper chain;
LazyCache: ``PREDICT_NOISE``), so a skipped step skips the 4DNeX forward and the grid's two streams
as a whole and a computed step runs them unchanged; both work on FourD Apply 4DNeX (native) and FourD
Grid Model (native) MODELs (``tests/comfyui/test_native_cache.py``). One exception is refused here:
EasyCache before ComfyUI 0.3.70 compares and caches the model *input*, which for Wan image-to-video
models is ``[noise 16 | mask 4 | condition 16]`` against a 16-channel output, so its cached residual
lands on the condition channels (and, before 0.3.66, on one batch entry only). ComfyUI 0.3.70 slices
the input to the output channels (``EasyCacheHolder.output_channels``).
"""

from __future__ import annotations

from ..errors import InputError


def refuse_unusable_step_cache(transformer_options: dict | None) -> None:
    """Raise if ``transformer_options`` carries a core step cache that cannot work with an
    image-to-video Wan model (see the module docstring). Called by the native wrappers per DiT call.

    Raises:
        InputError: EasyCache of a ComfyUI before 0.3.70 (the fix: update ComfyUI, or use LazyCache).
    """
    holder = (transformer_options or {}).get("easycache")
    if holder is not None and getattr(holder, "name", "") == "EasyCache" and not hasattr(holder, "output_channels"):
        raise InputError("EasyCache of this ComfyUI (before 0.3.70) caches the image-to-video condition channels "
                         "instead of the noise, so it cannot work with Wan I2V / 4DNeX MODELs. Update ComfyUI to "
                         "0.3.70 or later, or use LazyCache.")
