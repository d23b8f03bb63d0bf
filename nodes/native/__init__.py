"""The native path: 4DNeX on ComfyUI's own Wan ``MODEL`` (core loaders, samplers, memory manager).

Registered by ``nodes/__init__.py`` from :data:`NODE_CLASS_MAPPINGS` / :data:`NODE_DISPLAY_NAME_MAPPINGS`.
"""

from .apply import FourDApply4DNeXNative
from .conditioning import FourD4DNeXConditioningNative, FourD4DNeXTextEncodeNative
from .decode import FourDDecode6DNative
from .folders import register_sync_folder, register_tiny_model_folders
from .grid import FourDGridConditioningNative, FourDGridModelNative
from .grid_windows import FourDGridCanvasNative, FourDGridWindowMergeNative, FourDGridWindowNative
from .demo_standins import FourDTinyCLIPVisionNative, FourDTinyEncodersNative, FourDTinyVAENative

NODE_CLASS_MAPPINGS = {
    "FourDApply4DNeXNative": FourDApply4DNeXNative,
    "FourD4DNeXTextEncodeNative": FourD4DNeXTextEncodeNative,
    "FourD4DNeXConditioningNative": FourD4DNeXConditioningNative,
    "FourDDecode6DNative": FourDDecode6DNative,
    "FourDTinyEncodersNative": FourDTinyEncodersNative,
    "FourDTinyVAENative": FourDTinyVAENative,
    "FourDTinyCLIPVisionNative": FourDTinyCLIPVisionNative,
    "FourDGridModelNative": FourDGridModelNative,
    "FourDGridConditioningNative": FourDGridConditioningNative,
    "FourDGridCanvasNative": FourDGridCanvasNative,
    "FourDGridWindowNative": FourDGridWindowNative,
    "FourDGridWindowMergeNative": FourDGridWindowMergeNative,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDApply4DNeXNative": "FourD Apply 4DNeX (native)",
    "FourD4DNeXTextEncodeNative": "FourD 4DNeX Text Encode (native)",
    "FourD4DNeXConditioningNative": "FourD 4DNeX Conditioning (native)",
    "FourDDecode6DNative": "FourD Decode 6D (native)",
    "FourDTinyEncodersNative": "FourD Tiny Encoders (native CPU demo)",
    "FourDTinyVAENative": "FourD Tiny VAE (native CPU demo)",
    "FourDTinyCLIPVisionNative": "FourD Tiny CLIP Vision (native CPU demo)",
    "FourDGridModelNative": "FourD Grid Model (native, 4Real-Video sync)",
    "FourDGridConditioningNative": "FourD Grid Conditioning (native)",
    "FourDGridCanvasNative": "FourD Grid Canvas (native, windows)",
    "FourDGridWindowNative": "FourD Grid Window (native)",
    "FourDGridWindowMergeNative": "FourD Grid Window Merge (native)",
}

register_sync_folder()
register_tiny_model_folders()
