"""One ``generate`` configuration, reusable over many images: load the models once, make scenes.

Built from the parsed ``generate`` arguments (the same meaning as ``python -m fourd_core generate
--image``); the CLI hands over the export options and the geometry config it builds itself.
"""

from __future__ import annotations

import dataclasses
import time

from .errors import FourDError


class SceneJob:
    """Everything checkable is checked in the constructor, before models load (sampling settings,
    flags, export options); :meth:`load` loads the models once, :meth:`prepare` reads one image
    and :meth:`make` turns it into an exported scene.

    Args:
        args: the parsed ``generate`` arguments. export_options: ``io.export.ExportOptions``.
        geometry: ``api.GeometryConfig``, or None to skip camera/depth recovery.
    Raises:
        FourDError: invalid settings (the message names the fix).
    """

    def __init__(self, args, export_options, geometry):
        from .models.loading import FOURDNEX_HUB_ID, ModelSpec
        from .models.tiny import TINY_SAMPLING
        from .pipelines.fourdnex import SamplingConfig

        self.args, self.export_options, self.geometry = args, export_options, geometry
        export_options.check()  # may warn (once per process) that open3d clean-up will be skipped
        if args.lora is not None and str(args.lora).lower() == "none" and args.domain_embeddings:
            raise FourDError("--domain-embeddings is given but --lora none turns 4DNeX off; drop one of the two "
                             "(the domain embeddings only exist together with the 4DNeX LoRA).")
        self.tiny = args.preset == "tiny"
        d = TINY_SAMPLING if self.tiny else {"height": 480, "width": 720, "num_frames": 49, "steps": 50}
        self.sampling = SamplingConfig(num_frames=args.frames or d["num_frames"], height=args.height or d["height"],
                                       width=args.width or d["width"], steps=args.steps or d["steps"],
                                       guidance_scale=args.cfg, shift=args.shift, scheduler=args.scheduler,
                                       seed=args.seed, cache=getattr(args, "cache", "none"),
                                       cache_value=getattr(args, "cache_value", None))
        self.sampling.validate()
        if self.sampling.cache != "none" and getattr(args, "parallel", None):
            raise FourDError("--cache cannot be combined with --parallel: each rank would decide on its own shard or "
                             "pass whether to skip, and the ranks' collectives must match. Drop one of the two.")
        lora = args.lora if args.lora is not None else FOURDNEX_HUB_ID
        single_files = all([args.transformer_file, args.vae_file, args.text_encoder_file, args.image_encoder_file])
        base = "tiny" if self.tiny else (args.base or (None if single_files else ModelSpec.base))
        self.spec = ModelSpec(base=base, transformer_file=args.transformer_file, vae_file=args.vae_file,
                              text_encoder_file=args.text_encoder_file, image_encoder_file=args.image_encoder_file,
                              tokenizer=args.tokenizer, fourdnex=None if str(lora).lower() == "none" else lora,
                              domain_embeddings_file=args.domain_embeddings, lora_strength=args.lora_strength,
                              fuse_lora=not args.no_fuse_lora, dtype=args.dtype, cache_dir=args.cache_dir,
                              local_files_only=args.offline)
        self.device = "cpu"

    def load(self, device: str, log=print):
        """Load the models on ``device`` (``--offload`` default: group on CUDA, none on the CPU).
        Returns ``(pipe, info)`` (see ``models.loading.load_pipeline``)."""
        from .models.loading import load_pipeline
        from .models.memory import MemoryConfig

        args = self.args
        offload = args.offload or ("group" if str(device).startswith("cuda") else "none")
        memory = MemoryConfig(device=str(device), offload=offload, fp8_storage=args.fp8, vae_tiling=args.vae_tiling,
                              attention_backend=args.attention, release_encoders=True)
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
        image = prepare_image(load_image(image_path), sampling.height, sampling.width, mode=self.args.resize)
        if self.args.resize == "max_area":
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
