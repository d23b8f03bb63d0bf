"""Command line: ``python -m fourd_core {generate,geometry,gaussians,novel-view,train,info}``.

Examples::

    # no weights needed: the tiny random-weight preset (meaningless output, whole pipeline runs)
    python -m fourd_core generate --preset tiny --image photo.png --prompt "a street" --out out/

    # the released 4DNeX model (downloads Wan2.1-I2V-14B-480P-Diffusers + FrozenBurning/4DNex-Lora)
    python -m fourd_core generate --image photo.png --prompt-file prompt.txt --out out/ --offload group

    # re-run camera/depth recovery and the exports on a saved scene
    python -m fourd_core geometry --scene out/scene.safetensors --out out2/

    # Gaussian splats of a saved scene: pixel-aligned (instant) or fitted 4D Gaussians
    python -m fourd_core gaussians --scene out/scene.safetensors --out out/ --fit --iterations 2000
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from .errors import FourDError, shorten_long_values


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors cut to a sensible length (an absurd value is not echoed in full)."""

    def error(self, message):
        super().error(shorten_long_values(message))


def _int(text: str) -> int:
    """``type=`` for integer options: refuses absurd values without echoing them."""
    try:
        if len(text) > 19:
            raise ValueError
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {shorten_long_values(text, 40)!r}") from None


#: the config fields each command exposes (their flags, types, choices, defaults and help come from the fields)
SAMPLING_OPTIONS = ("steps", "guidance_scale", "shift", "scheduler", "seed", "num_frames", "height", "width", "cache",
                    "cache_value")
MEMORY_OPTIONS = ("device", "offload", "fp8_storage", "vae_tiling", "attention_backend")
MODEL_OPTIONS = ("lora_strength", "fuse_lora", "dtype", "local_files_only")
GEOMETRY_OPTIONS = ("shared_intrinsics", "centered_principal_point", "square_pixels", "robust", "temporal_smoothness",
                    "fallback")
EXPORT_OPTIONS = ("fps", "min_confidence", "voxel_size", "outlier_neighbors", "max_points")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models.loading import ModelSpec
    from .models.memory import MemoryConfig
    from .settings import add_arguments

    g = p.add_argument_group("models")
    g.add_argument("--preset", choices=["tiny", "4dnex"], default=None,
                   help="'tiny': random toy weights, no download (outputs are meaningless); "
                        "'4dnex': Wan2.1-I2V-14B-480P + the 4DNeX LoRA from the hub (default unless --base is given)")
    g.add_argument("--base", help="diffusers folder or hub id of Wan2.1-I2V-14B-480P (default: the hub id)")
    g.add_argument("--transformer-file", help="single-file DiT (original/ComfyUI layout; fp16, bf16 or fp8)")
    g.add_argument("--vae-file", help="single-file Wan VAE (e.g. ComfyUI wan_2.1_vae.safetensors)")
    g.add_argument("--text-encoder-file", help="single-file UMT5-XXL encoder (e.g. umt5_xxl_fp16.safetensors)")
    g.add_argument("--image-encoder-file", help="single-file CLIP-H vision encoder (clip_vision_h.safetensors)")
    g.add_argument("--tokenizer", help="UMT5 tokenizer folder (default: from --base, else the hub)")
    g.add_argument("--lora", help="4DNeX release folder, LoRA file or hub id (default FrozenBurning/4DNex-Lora); "
                                  "'none' for plain Wan")
    g.add_argument("--domain-embeddings", help="learnable_domain_embeddings file (default: beside the LoRA)")
    g.add_argument("--cache-dir", help="hub cache / tiny preset folder")
    add_arguments(g, ModelSpec, MODEL_OPTIONS, int_type=_int)
    add_arguments(p.add_argument_group("memory"), MemoryConfig, MEMORY_OPTIONS, defaults={"offload": None},
                  shown={"offload": "group on CUDA (fits 24 GB), none on the CPU"}, int_type=_int)


def _add_geometry_export_args(p: argparse.ArgumentParser) -> None:
    from .api import GeometryConfig
    from .io.export import ExportOptions
    from .io.formats import EXPORT_FORMATS
    from .settings import add_arguments

    g = p.add_argument_group("geometry")
    add_arguments(g, GeometryConfig, GEOMETRY_OPTIONS, int_type=_int)
    g.add_argument("--per-frame-intrinsics", action="store_true", help="same as --intrinsics per-frame")
    g.add_argument("--free-principal-point", action="store_true", help="same as --principal-point free")
    e = p.add_argument_group("export")
    add_arguments(e, ExportOptions, EXPORT_OPTIONS, int_type=_int)
    for name in EXPORT_FORMATS:
        e.add_argument(f"--no-{name}", action="store_true", help=f"skip {EXPORT_FORMATS.help(name)}")


def _add_distributed_args(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("batch and multi-GPU (works under torchrun and as one process)")
    d.add_argument("--images", help="a folder of images: one scene each, in OUT/<image name>/ (instead of --image)")
    d.add_argument("--prompts", help="JSONL, one {\"image\": \"name.png\", \"prompt\": \"...\"[, \"seed\": 1]} per "
                                     "line; else <image name>.txt beside each image, else --prompt/--prompt-file")
    d.add_argument("--redo", action="store_true", help="batch: redo finished scenes too (default: skip them)")
    d.add_argument("--parallel", help="split one scene over ranks: 'ulysses=K', 'ring=M', 'cfg=2' or combinations "
                                      "(diffusers context parallelism; torchrun --nproc-per-node multiple of the product)")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m fourd_core`` argument parser (sub-commands generate, geometry, info)."""
    parser = _Parser(prog="python -m fourd_core", description="One image -> a 4D scene (4DNeX).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="image (+ prompt) -> videos, cameras, depth, point clouds")
    g.add_argument("--image", help="input image (PNG, JPEG, WebP...); or --images DIR")
    g.add_argument("--prompt", help="text prompt")
    g.add_argument("--prompt-file", help="read the prompt from this text file")
    g.add_argument("--encoding", help="text encoding of --prompt-file, --prompts and <image>.txt files "
                                      "(default UTF-8; e.g. cp1252 for Windows text files)")
    g.add_argument("--out", required=True, help="output folder")
    _add_distributed_args(g)
    s = g.add_argument_group("sampling (defaults: the official 4DNeX settings; the tiny preset's own sizes and steps)")
    from .job import GenerateConfig
    from .pipelines.fourdnex import SamplingConfig
    from .settings import add_arguments

    add_arguments(s, SamplingConfig, SAMPLING_OPTIONS, defaults={n: None for n in ("steps", "num_frames", "height",
                                                                                  "width")}, int_type=_int)
    add_arguments(s, GenerateConfig, ["resize"])
    s.add_argument("--no-geometry", action="store_true", help="skip camera/depth recovery and its exports")
    _add_model_args(g)
    _add_geometry_export_args(g)

    r = sub.add_parser("geometry", help="recover cameras/depth for a saved scene and export it")
    r.add_argument("--scene", required=True, help="scene.safetensors written by generate")
    r.add_argument("--out", required=True)
    r.add_argument("--device")
    _add_geometry_export_args(r)

    _add_gaussians_parser(sub)
    from .cli_novel_view import add_parser as _add_novel_view_parser

    _add_novel_view_parser(sub)
    from .cli_train import add_parser as _add_train_parser

    _add_train_parser(sub)

    sub.add_parser("info", help="print versions and devices")
    for name, p in sub.choices.items():
        if name == "train":     # its sub-commands have their own
            continue
        p.add_argument("--verbose", action="store_true",
                       help="on an error, also print the underlying library's error and traceback")
    return parser


def _read_prompt(args) -> str:
    if args.prompt_file:
        from .util.text import read_text_file

        text = read_text_file(args.prompt_file, "--prompt-file", args.encoding).strip()
    else:
        text = (args.prompt or "").strip()
    if not text:
        raise FourDError("Give a prompt with --prompt or --prompt-file (4DNeX is text- and image-conditioned).")
    return text


def _geometry_config(args):
    from .api import GeometryConfig
    from .settings import from_arguments

    values = from_arguments(GeometryConfig, args, GEOMETRY_OPTIONS)
    if args.per_frame_intrinsics:
        values["shared_intrinsics"] = False
    if args.free_principal_point:
        values["centered_principal_point"] = False
    return GeometryConfig(**values)


def _export_options(args, geometry: bool):
    from .io.export import ExportOptions
    from .io.formats import EXPORT_FORMATS
    from .settings import from_arguments

    formats = {}
    for name in EXPORT_FORMATS:
        if (EXPORT_FORMATS.get(name)().needs_cameras and not geometry) or getattr(args, f"no_{name}", False):
            formats[name] = False
    return ExportOptions(formats=formats, **from_arguments(ExportOptions, args, EXPORT_OPTIONS))


def _model_spec(args):
    """The ModelSpec of ``generate``'s model options (``--preset``, ``--lora none``, single files)."""
    from .models.loading import FOURDNEX_HUB_ID, ModelSpec
    from .settings import from_arguments

    if args.lora is not None and str(args.lora).lower() == "none" and args.domain_embeddings:
        raise FourDError("--domain-embeddings is given but --lora none turns 4DNeX off; drop one of the two "
                         "(the domain embeddings only exist together with the 4DNeX LoRA).")
    lora = args.lora if args.lora is not None else FOURDNEX_HUB_ID
    single_files = all([args.transformer_file, args.vae_file, args.text_encoder_file, args.image_encoder_file])
    base = "tiny" if args.preset == "tiny" else (args.base or (None if single_files else ModelSpec.base))
    return ModelSpec(base=base, transformer_file=args.transformer_file, vae_file=args.vae_file,
                     text_encoder_file=args.text_encoder_file, image_encoder_file=args.image_encoder_file,
                     tokenizer=args.tokenizer, fourdnex=None if str(lora).lower() == "none" else lora,
                     domain_embeddings_file=args.domain_embeddings, cache_dir=args.cache_dir,
                     **from_arguments(ModelSpec, args, MODEL_OPTIONS))


def generate_config(args):
    """The :class:`~fourd_core.job.GenerateConfig` of parsed ``generate`` arguments (checked by SceneJob)."""
    from .job import GenerateConfig
    from .models.memory import MemoryConfig
    from .pipelines.fourdnex import SamplingConfig
    from .settings import from_arguments

    values = from_arguments(MemoryConfig, args, MEMORY_OPTIONS)
    memory = MemoryConfig(**{k: v for k, v in values.items() if k != "offload"})
    memory = __import__("dataclasses").replace(memory, offload=args.offload)   # None: decided by the device at load
    sampling = SamplingConfig.for_preset(args.preset, **from_arguments(SamplingConfig, args, SAMPLING_OPTIONS))
    return GenerateConfig(model=_model_spec(args), sampling=sampling, memory=memory,
                          export=_export_options(args, not args.no_geometry),
                          geometry=None if args.no_geometry else _geometry_config(args), resize=args.resize)


class _Progress:
    """A tqdm bar for the sampling steps."""

    def __init__(self):
        self.bar = None

    def __call__(self, step, total, latents=None):
        from tqdm import tqdm

        from .interrupts import raise_if_stop_requested

        raise_if_stop_requested()

        if self.bar is None:
            self.bar = tqdm(total=total, desc="sampling", unit="step", file=sys.stderr)
        self.bar.update(step - self.bar.n)
        if step >= total:
            self.bar.close()


def cmd_generate(args) -> int:
    """``generate``: checks the prompt and ``--out`` first; a failed run leaves ``--out`` as it was.
    ``--images``, ``--parallel`` or a ``torchrun`` launch go to :mod:`fourd_core.cli_batch`."""
    import os

    from .util.atomic import writable_output_dir

    if args.images or args.parallel or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .cli_batch import cmd_generate_distributed

        # one image: its prompt; a batch: the default prompt of images without their own (may be None)
        prompt = _read_prompt(args) if (args.prompt or args.prompt_file or not args.images) else None
        return cmd_generate_distributed(args, prompt, generate_config(args))
    if not args.image:
        raise FourDError("Give --image FILE (one scene) or --images DIR (a batch of scenes).")
    prompt = _read_prompt(args)
    with writable_output_dir(args.out, "--out"):
        return _generate(args, prompt)


def _generate(args, prompt: str) -> int:
    """One image -> one scene in ``--out`` (the batch mode runs the same :class:`~fourd_core.job.SceneJob`)."""
    import torch

    from .job import SceneJob

    def log(message: str) -> None:
        print(f"[fourd] {message}", file=sys.stderr)

    t_start = time.perf_counter()
    # everything checkable is checked before models load: --out (caller), settings (SceneJob), the image
    job = SceneJob(generate_config(args))
    prepared = job.prepare(args.image)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe, info = job.load(device, log=log)
    t_loaded = time.perf_counter()
    scene_summary = job.make(pipe, info, prepared, prompt, args.out, log=log, callback=_Progress())
    summary = {"out": str(Path(args.out).resolve()), "tiny_preset": job.tiny, "load_s": round(t_loaded - t_start, 2),
               "total_s": round(time.perf_counter() - t_start, 2), **scene_summary}
    print(json.dumps(summary, indent=1))
    return 0


def cmd_geometry(args) -> int:
    from .api import recover_geometry
    from .io.export import export_scene
    from .util.atomic import writable_output_dir
    from .scene import Scene4D

    options = _export_options(args, True)
    options.check()
    scene = Scene4D.load(args.scene)
    with writable_output_dir(args.out, "--out"):  # checked before the solve; a failed run leaves --out as it was
        scene = recover_geometry(scene, _geometry_config(args), device=args.device)
        written = export_scene(scene, args.out, options)
    print(json.dumps({"out": str(Path(args.out).resolve()), "files": {k: len(v) for k, v in written.items()},
                      "geometry": scene.metadata.get("geometry")}, indent=1))
    return 0


def _add_gaussians_parser(sub) -> None:
    from .settings import add_arguments
    from .splats.config import INTERACTIVE_RESOLUTION, FitConfig, PixelSplatConfig

    p = sub.add_parser("gaussians", help="Gaussian splats of a saved scene (pixel-aligned, or fitted 4D with --fit)")
    p.add_argument("--scene", required=True, help="scene.safetensors with cameras (written by generate/geometry)")
    p.add_argument("--out", required=True, help="output folder: gaussians/frame_#####.ply (+ gaussians_orbit.mp4)")
    p.add_argument("--fit", action="store_true", help="optimise deformable 4D Gaussians (else pixel-aligned, instant)")
    add_arguments(p.add_argument_group("pixel-aligned splats (with --fit: the start set; stride 1 means 2 there)"),
                  PixelSplatConfig, ("stride", "footprint", "min_confidence"), int_type=_int)
    add_arguments(p.add_argument_group("--fit"), FitConfig, ("iterations", "resolution", "isotropic", "backend"),
                  defaults={"resolution": INTERACTIVE_RESOLUTION}, int_type=_int)
    p.add_argument("--orbit", action="store_true", help="also render gaussians_orbit.mp4 (8 views, 30 degrees)")
    p.add_argument("--device", help="cuda or cpu (default: cuda if available)")


def cmd_gaussians(args) -> int:
    """``gaussians``: every setting, the scene and ``--out`` are checked before the (possibly hour-long)
    fit; the splats are written all-or-nothing into ``--out``."""
    import torch

    from . import settings
    from .scene import Scene4D
    from .splats.config import PixelSplatConfig
    from .splats.fit import FitConfig, fit_gaussians
    from .splats.gaussians import pixel_aligned_gaussians
    from .splats.ply import write_gaussians_sequence
    from .util.atomic import staged_output, writable_output_dir

    for name in ("stride", "footprint", "min_confidence"):
        settings.check(PixelSplatConfig, name, getattr(args, name), flag="--" + name.replace("_", "-"))
    cfg = None
    if args.fit:
        cfg = FitConfig(iterations=args.iterations, resolution=args.resolution, isotropic=args.isotropic,
                        init_stride=2 if args.stride == 1 else args.stride, footprint=args.footprint,
                        backend=args.backend)
        cfg.validate()
    scene = Scene4D.load(args.scene)
    if not scene.has_cameras:
        raise FourDError(f"{args.scene} has no cameras; run `python -m fourd_core geometry` on it first.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    with writable_output_dir(args.out, "--out"):  # probed before the fit; a failed run leaves --out as it was
        if cfg is not None:
            from tqdm import tqdm

            bar = tqdm(total=cfg.iterations, desc="fitting", unit="it", file=sys.stderr)
            g4d = fit_gaussians(scene, cfg, device=device, callback=lambda s, t, p: bar.update(s - bar.n))
            bar.close()
        else:
            g4d = pixel_aligned_gaussians(scene, stride=args.stride, footprint=args.footprint,
                                          min_confidence=args.min_confidence)
        with staged_output(args.out, "--out") as (staging, out):
            write_gaussians_sequence(g4d, staging / "gaussians")
            if args.orbit:
                from .io.video import write_video
                from .splats.orbit import render_orbit

                write_video(staging / "gaussians_orbit.mp4", render_orbit(g4d, backend=args.backend, device=device), 8.0)
    print(json.dumps({"out": str(out.resolve()), "kind": g4d.metadata.get("kind"), "frames": g4d.num_frames,
                      "splats_per_frame": g4d.counts()[0], "seconds": round(time.perf_counter() - t0, 2),
                      **({"fit": g4d.metadata["fit"]} if args.fit else {})}, indent=1))
    return 0


def cmd_novel_view(args) -> int:
    from .cli_novel_view import cmd_novel_view as run

    return run(args)


def cmd_train(args) -> int:
    from .cli_train import cmd_train as run

    return run(args)


def cmd_info(args) -> int:
    import diffusers
    import torch
    import transformers

    from . import __version__

    print(json.dumps({"fourd": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
                      "transformers": transformers.__version__, "cuda": torch.cuda.is_available(),
                      "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}, indent=1))
    return 0


def _on_signal(signum, frame):
    from .interrupts import Terminated, request_stop

    kind = KeyboardInterrupt if signum == signal.SIGINT else Terminated
    request_stop(kind)  # kept even if the exception below lands where Python ignores exceptions
    raise kind()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the CLI: ``warning: <message>`` on one line, without the source line."""
    print(f"warning: {shorten_long_values(str(message))}", file=sys.stderr if file is None else file)


def _print_error(exc: FourDError, verbose: bool) -> None:
    """The one-line error (long values cut), and with ``--verbose`` the chained library error's traceback."""
    import traceback

    cause = exc.__cause__ or exc.__context__
    if verbose and cause is not None:
        traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
    message = " ".join(shorten_long_values(str(exc)).split())
    print(f"error: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point. Returns the exit code: 0 ok, 2 a FourDError (one line on stderr; ``--verbose``
    adds the underlying library error), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); in both
    interrupt cases nothing partial is left. Warnings print as one ``warning:`` line, each text once."""
    import threading
    import warnings

    from .interrupts import Terminated, clear_stop_request, make_unraisable_hook

    args = build_parser().parse_args(argv)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = make_unraisable_hook(previous_hook)
    with warnings.catch_warnings():
        warnings.simplefilter("once", UserWarning)
        warnings.showwarning = _show_warning
        try:
            return {"generate": cmd_generate, "geometry": cmd_geometry, "gaussians": cmd_gaussians,
                    "novel-view": cmd_novel_view, "train": cmd_train, "info": cmd_info}[args.command](args)
        except FourDError as exc:
            _print_error(exc, getattr(args, "verbose", False))
            return 2
        except KeyboardInterrupt:
            print("interrupted: no partial outputs were written", file=sys.stderr)
            return 130
        except Terminated:
            print("terminated: no partial outputs were written", file=sys.stderr)
            return 143
        finally:
            clear_stop_request()
            sys.unraisablehook = previous_hook
            for s, handler in previous.items():
                signal.signal(s, handler)
