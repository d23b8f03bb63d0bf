"""Custom socket types of the pack and small value classes passed between nodes."""

from __future__ import annotations

import dataclasses

from ..fourd_core.models.loading import ModelSpec
from ..fourd_core.models.memory import MemoryConfig

MODEL = "FOURD_MODEL"        # FourDModel: what to load (cheap; the pipeline is loaded once and cached)
MEMORY = "FOURD_MEMORY"      # MemoryConfig
XYZ = "FOURD_XYZ"            # torch.Tensor [H, W, 3] in [-1, 1]: first-frame XYZ condition
LATENT = "FOURD_LATENT"      # FourDLatent
SCENE = "FOURD_SCENE"        # fourd_core.scene.Scene4D
CAMERAS = "FOURD_CAMERAS"    # FourDCameras: a camera path (K + cam-to-world per view)
GAUSSIANS = "FOURD_GAUSSIANS"  # fourd_core.splats.Gaussians4D: splats per frame or a deformable 4D set
CATEGORY = "FourD"
#: category and description lead of the diffusers-based nodes (kept for parity with the CLI)
DIFFUSERS_CATEGORY = f"{CATEGORY}/diffusers"
DIFFUSERS_NOTE = ("Diffusers path (kept for parity with the CLI): loads its own copy of Wan2.1 outside ComfyUI's "
                  "memory manager, which it empties first (unload_all_models), so models other nodes loaded are "
                  "unloaded. In ComfyUI prefer the native nodes (FourD/native) with core Load Diffusion Model and "
                  "KSampler. ")


@dataclasses.dataclass(frozen=True)
class FourDModel:
    """A model spec plus memory settings. The nodes never mutate a loaded pipeline in place."""

    spec: ModelSpec
    memory: MemoryConfig

    def replace(self, **spec_changes) -> "FourDModel":
        return FourDModel(dataclasses.replace(self.spec, **spec_changes), self.memory)


@dataclasses.dataclass
class FourDLatent:
    """Sampled width-fused latents ``[1, 16, T, h, 2w]`` with what produced them."""

    latents: object
    prompt: str
    sampling: dict
    model_info: dict


@dataclasses.dataclass
class FourDCameras:
    """A camera path: ``K`` ``[N, 3, 3]`` and ``cam_to_world`` ``[N, 4, 4]`` (OpenCV), image size."""

    K: object
    cam_to_world: object
    height: int
    width: int
