"""ComfyUI nodes of ComfyUI-FourD: thin V1 adapters over ``fourd_core``.

Imported by the pack's top-level ``__init__.py`` (ComfyUI loads it as a package), so modules here
use relative imports; ``comfy`` / ``folder_paths`` are only touched lazily in ``comfy_bridge``.
"""

from .examples import FourDExampleImage, FourDExampleScene
from .grid_nodes import FourDCameraPath, FourDGridSampler, FourDRenderViews
from .loaders import FourDLoad4DNeX, FourDLoadWan, FourDMemorySettings
from .native import NODE_CLASS_MAPPINGS as NATIVE_NODES, NODE_DISPLAY_NAME_MAPPINGS as NATIVE_NAMES
from .novel_view_nodes import FourDRenderTrajectory
from .sampling import FourDDecode, FourDPrepareImage, FourDSampler
from .splat_nodes import FourDFit4DGaussians, FourDGaussiansFromScene, FourDPreviewGaussians, FourDSaveGaussians
from .scene_nodes import FourDExport, FourDLoadScene, FourDPreview4D, FourDRecoverCameras, FourDSaveScene

NODE_CLASS_MAPPINGS = {
    "FourDExampleImage": FourDExampleImage,
    "FourDExampleScene": FourDExampleScene,
    "FourDLoadWan": FourDLoadWan,
    "FourDLoad4DNeX": FourDLoad4DNeX,
    "FourDMemorySettings": FourDMemorySettings,
    "FourDPrepareImage": FourDPrepareImage,
    "FourDSampler": FourDSampler,
    "FourDDecode": FourDDecode,
    "FourDRecoverCameras": FourDRecoverCameras,
    "FourDExport": FourDExport,
    "FourDSaveScene": FourDSaveScene,
    "FourDLoadScene": FourDLoadScene,
    "FourDPreview4D": FourDPreview4D,
    "FourDCameraPath": FourDCameraPath,
    "FourDRenderViews": FourDRenderViews,
    "FourDGridSampler": FourDGridSampler,
    "FourDGaussiansFromScene": FourDGaussiansFromScene,
    "FourDFit4DGaussians": FourDFit4DGaussians,
    "FourDSaveGaussians": FourDSaveGaussians,
    "FourDPreviewGaussians": FourDPreviewGaussians,
    "FourDRenderTrajectory": FourDRenderTrajectory,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "FourDExampleImage": "FourD Example Image (shipped photo + prompt)",
    "FourDExampleScene": "FourD Example Scene (no weights, from the shipped photo)",
    "FourDLoadWan": "FourD Load Wan2.1-I2V (diffusers)",
    "FourDLoad4DNeX": "FourD Load 4DNeX LoRA (diffusers)",
    "FourDMemorySettings": "FourD Memory Settings (diffusers)",
    "FourDPrepareImage": "FourD Prepare Image (+XYZ init)",
    "FourDSampler": "FourD 4DNeX Sampler (diffusers)",
    "FourDDecode": "FourD Decode 6D (RGB + XYZ) (diffusers)",
    "FourDRecoverCameras": "FourD Recover Cameras + Depth",
    "FourDExport": "FourD Export (video, PLY, GLB, cameras, depth)",
    "FourDSaveScene": "FourD Save Scene",
    "FourDLoadScene": "FourD Load Scene",
    "FourDPreview4D": "FourD 4D Preview",
    "FourDCameraPath": "FourD Camera Path (orbit, arc, dolly)",
    "FourDRenderViews": "FourD Render Views (freeze-time video)",
    "FourDGridSampler": "FourD 4D Grid Sampler (4Real-Video) (diffusers)",
    "FourDGaussiansFromScene": "FourD Gaussians from Scene",
    "FourDFit4DGaussians": "FourD Fit 4D Gaussians",
    "FourDSaveGaussians": "FourD Save Gaussians (PLY sequence)",
    "FourDPreviewGaussians": "FourD 4D Preview (Gaussians, deprecated)",
    "FourDRenderTrajectory": "FourD Render Trajectory (novel-view video for VACE)",
}

NODE_CLASS_MAPPINGS.update(NATIVE_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(NATIVE_NAMES)
