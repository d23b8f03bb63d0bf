"""One ``generate`` configuration, reusable over many images: load the models once, make scenes.

:class:`GenerateConfig` holds the typed configs of every stage (models, memory, sampling, camera
recovery, exports); the CLI builds it from its arguments (``fourd_core.cli``), the batch mode and the
library take it as it is.
"""

from __future__ import annotations

import dataclasses
import time

from .errors import FourDError
from .settings import setting, validate

RESIZE_MODES = ("crop", "max_area")


@dataclasses.dataclass
class GenerateConfig:
    """What ``generate`` makes from an image.

    Attributes:
        model: :class:`~fourd_core.models.loading.ModelSpec` (``base="tiny"``: the tiny preset).
        sampling: :class:`~fourd_core.pipelines.fourdnex.SamplingConfig`.
        memory: :class:`~fourd_core.models.memory.MemoryConfig`; ``offload=None`` = group on CUDA, none on
            the CPU (decided at load).
        export: :class:`~fourd_core.io.export.ExportOptions`.
        geometry: :class:`~fourd_core.api.GeometryConfig`, or None to skip camera/depth recovery.
        resize: how an image is brought to the sampling size.
    """

    model: object
    sampling: object
    memory: object
    export: object
    geometry: object | None = None
    resize: str = setting("crop", help="'crop': cover + centre crop to exactly HxW (in distribution); 'max_area': "
                          "the official aspect-preserving rule", choices=RESIZE_MODES)

    @property
    def tiny(self) -> bool:
        return self.model.base == "tiny"

    def output_settings(self) -> dict:
        """Every setting that changes a scene's files (a batch scene's fingerprint), as plain JSON values."""
        def plain(obj):
            return None if obj is None else dataclasses.asdict(obj)

        model = {k: v for k, v in dataclasses.asdict(self.model).items()
                 if k not in ("cache_dir", "local_dir", "lora_local_dir", "local_files_only")}
        return {"model": model, "sampling": plain(self.sampling), "export": plain(self.export),
                "geometry": plain(self.geometry), "resize": self.resize}


class SceneJob:
    """Everything checkable is checked in the constructor, before models load (sampling settings, export
    options, geometry options); :meth:`load` loads the models once, :meth:`prepare` reads one image
    and :meth:`make` turns it into an exported scene.

    Args:
        config: :class:`GenerateConfig`.
    Raises:
        FourDError: invalid settings (the message names the fix).
    """

    def __init__(self, config: GenerateConfig):
        validate(config)
        config.sampling.validate()
        config.export.check()  # may warn (once per process) that open3d clean-up will be skipped
        if config.geometry is not None:
            validate(config.geometry)
        if config.model.fourdnex is None and config.model.domain_embeddings_file:
            raise FourDError("--domain-embeddings is given but --lora none turns 4DNeX off; drop one of the two "
                             "(the domain embeddings only exist together with the 4DNeX LoRA).")
        self.config = config
        self.sampling, self.spec, self.export_options, self.geometry = (config.sampling, config.model, config.export,
                                                                        config.geometry)
        self.tiny = config.tiny
        self.device = "cpu"

    def load(self, device: str, log=print):
        """Load the models on ``device`` (offload default: group on CUDA, none on the CPU).
        Returns ``(pipe, info)`` (see ``pipelines.assemble.load_pipeline``)."""
        from .pipelines.assemble import load_pipeline

        mem = self.config.memory
        offload = mem.offload or ("group" if str(device).startswith("cuda") else "none")
        memory = dataclasses.replace(mem, device=str(device), offload=offload, release_encoders=True)
        if self.tiny:
            log("TINY PRESET: random weights - the outputs are meaningless; this only exercises the pipeline.")
        log(f"loading models ({'tiny preset' if self.tiny else self.spec.base}) on {device}, offload={offload}")
        self.device = str(device)
        return load_pipeline(self.spec, memory, progress=lambda m: log(f"  {m}"))

    def prepare(self, image_path, seed: int | None = None):
        """Read and size one image (cheap: call it before :meth:`load` to fail early).

        Returns:
            ``(image [H, W, 3] float in [0, 1], SamplingConfig)`` (``seed`` overrides ``--seed``).
        Raises:
            InputError: unreadable or too small image.
        """
        from .io.images import load_image, prepare_image

        sampling = self.sampling if seed is None else dataclasses.replace(self.sampling, seed=int(seed))
        image = prepare_image(load_image(image_path), sampling.height, sampling.width, mode=self.config.resize)
        if self.config.resize == "max_area":
            sampling = dataclasses.replace(sampling, height=image.shape[0], width=image.shape[1])
        return image, sampling

    def make(self, pipe, info, prepared, prompt: str, out, *, write: bool = True, log=print, callback=None) -> dict:
        """A prepared image (:meth:`prepare`) -> scene -> files in ``out``. With ``write=False`` only
        the sampling runs (the non-writing ranks of a context-/CFG-parallel group: their collectives
        must match the writer's). ``callback(step, total, latents)`` follows the sampling steps.
        Returns the scene's summary (sizes, timings, file counts)."""
        from .api import image_to_4d, recover_geometry
        from .io.export import export_scene
        from .pipelines.fourdnex import generate_latents

        t_start = time.perf_counter()
        image, sampling = prepared
        if not write:
            generate_latents(pipe, image, prompt, sampling, callback=callback)
            return {}
        scene = image_to_4d(pipe, image, prompt, sampling, model_info=info, callback=callback)
        if self.geometry is not None:
            log("recovering cameras and depth")
            scene = recover_geometry(scene, self.geometry, device=None if self.device == "cpu" else self.device)
        scene.metadata["tiny_preset"] = self.tiny
        log(f"writing outputs to {out}")
        written = export_scene(scene, out, self.export_options)
        summary = {"frames": scene.num_frames, "size": list(scene.size), **scene.metadata.get("timings", {}),
                   "scene_s": round(time.perf_counter() - t_start, 2), "files": {k: len(v) for k, v in written.items()}}
        if self.geometry is not None:
            summary["focal_px"] = round(float(scene.K[0, 0, 0]), 3)
        return summary
