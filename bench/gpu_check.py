"""One-shot GPU check: the real 4DNeX shapes on random weights at the real Wan2.1-I2V-14B config.

Measures, in one process, and prints one table:

* per-step time (CFG on: two DiT passes per step; median over steps 2..N, step 1 is warm-up) of the
  4DNeX path (``generate_latents``) vs diffusers' stock ``WanImageToVideoPipeline`` on the same
  transformer (4DNeX patches off) at the same latent size, and their ratio; with SDPA (``native``)
  and with the flash / sage attention backends where their packages are installed;
* the 4DNeX path with ``--offload group`` and with ``--fp8`` weight storage: per-step time and peak
  allocated / reserved CUDA memory (peaks cover the whole sampling call, VAE condition encode included);
* VAE decode (both halves, float32) time and peak;
* the fused grid attention (4Real-Video-V2 view-time pattern) at a real grid size: gathered keys
  vs flex attention (compiled; its first call, which compiles, is timed apart).

Full mode (default; CUDA; 49 frames, 480x720 per modality = 35,100 tokens, 14B config in bf16,
grid 8 views x 13 latent frames at 480x720)::

    python bench/gpu_check.py                   # < 8 min on one H200 (--budget-s stops early)

``--tiny`` runs the same code at toy sizes (tiny config, 5 frames, 32x48, float32) on the CPU,
so CI keeps it working; rows that need CUDA (group offload, memory) say so. Random weights: only
times and memory mean anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclasses.dataclass
class Sizes:
    """Everything that differs between the full and the tiny check."""

    transformer: dict
    vae: dict
    dtype: torch.dtype
    frames: int
    height: int
    width: int
    grid_views: int
    grid_times: int
    text_tokens: int = 512
    image_tokens: int = 257

    @classmethod
    def full(cls) -> "Sizes":
        from fourd_core.models.loading import _config

        return cls(transformer=_config(None, "transformer", "transformer.json"), vae=_config(None, "vae", "vae.json"),
                   dtype=torch.bfloat16, frames=49, height=480, width=720, grid_views=8, grid_times=13)

    @classmethod
    def tiny(cls) -> "Sizes":
        from fourd_core.models.tiny import TINY_TRANSFORMER, TINY_VAE

        return cls(transformer=dict(TINY_TRANSFORMER), vae=dict(TINY_VAE), dtype=torch.float32, frames=5, height=32,
                   width=48, grid_views=2, grid_times=2, image_tokens=5)


class Report:
    """Rows of the final table; each row is also printed (stderr) when measured."""

    def __init__(self, device: torch.device, budget_s: float):
        self.rows: list[tuple] = []
        self.device = device
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def over_budget(self) -> bool:
        return time.perf_counter() - self.t0 > self.budget_s

    def add(self, section: str, variant: str, seconds: float | None, ratio: float | None = None,
            peak: tuple | None = None, note: str = "") -> None:
        row = (section, variant, seconds, ratio, peak, note)
        self.rows.append(row)
        print(f"[gpu_check {time.perf_counter() - self.t0:6.1f}s] {self._fmt(row)}", file=sys.stderr, flush=True)

    @staticmethod
    def _fmt(row) -> str:
        section, variant, s, ratio, peak, note = row
        t = "-" if s is None else (f"{s * 1e3:9.1f} ms" if s < 10 else f"{s:9.2f} s ")
        r = "" if ratio is None else f"x{ratio:5.3f}"
        p = "-" if peak is None else f"{peak[0]:6.1f} / {peak[1]:6.1f} GiB"
        return f"{section:<12} | {variant:<44} | {t:>12} | {r:>7} | {p:>19} | {note}"

    def print_table(self, title: str) -> None:
        print(title)
        head = f"{'section':<12} | {'variant':<44} | {'time':>12} | {'ratio':>7} | {'peak alloc / reserved':>19} | note"
        print(head)
        print("-" * len(head))
        for row in self.rows:
            print(self._fmt(row))
        print(f"total {time.perf_counter() - self.t0:.1f} s")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> tuple | None:
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30)


def build_transformer(sizes: Sizes, device: torch.device, seed: int = 0):
    """Random ``WanTransformer3DModel`` at ``sizes.transformer``, created on ``device`` in ``sizes.dtype``,
    with the 4DNeX patches and random domain embeddings."""
    from diffusers import WanTransformer3DModel

    from fourd_core.models.patches import apply_fourdnex_patches

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(sizes.dtype)
    try:
        with torch.device(device):
            tr = WanTransformer3DModel.from_config({k: v for k, v in sizes.transformer.items() if not k.startswith("_")})
    finally:
        torch.set_default_dtype(previous)
    tr = tr.to(device=device, dtype=sizes.dtype).eval().requires_grad_(False)
    keep = set(getattr(tr, "_keep_in_fp32_modules", None) or ())
    for name, p in tr.named_parameters():  # as from_pretrained(torch_dtype=...) keeps them
        if keep & set(name.split(".")):
            p.data = p.data.float()
    inner = tr.config.num_attention_heads * tr.config.attention_head_dim
    return apply_fourdnex_patches(tr, torch.randn(2, inner) * 0.1)


def build_pipeline(sizes: Sizes, transformer, device: torch.device):
    """FourDNeXPipeline around ``transformer`` with a random VAE at ``sizes.vae``; the encoders are the
    tiny ones and never run (the check passes text / CLIP features)."""
    from diffusers import AutoencoderKLWan

    from fourd_core.models.tiny import build_tiny_components
    from fourd_core.pipelines.fourdnex import FourDNeXPipeline

    comps = build_tiny_components()
    with torch.device(device):
        vae = AutoencoderKLWan.from_config({k: v for k, v in sizes.vae.items() if not k.startswith("_")})
    comps.update(transformer=transformer, vae=vae.to(device).eval().requires_grad_(False))
    pipe = FourDNeXPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    pipe._fourd_device = device
    return pipe


def conditions(sizes: Sizes, tr, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, sizes.text_tokens, tr.config.text_dim, generator=g)
    clip = torch.randn(1, sizes.image_tokens, tr.config.image_dim, generator=g)
    return {"prompt_embeds": text.to(device, sizes.dtype), "negative_prompt_embeds": (text * 0).to(device, sizes.dtype),
            "image_embeds": clip.to(device, sizes.dtype)}


def per_step(run, device: torch.device) -> float:
    """Median time between step ends, first step (warm-up) excluded."""
    stamps = []

    def stamp(*_a, **_k):
        sync(device)
        stamps.append(time.perf_counter())
        return {}

    run(stamp)
    gaps = [b - a for a, b in zip(stamps[:-1], stamps[1:])]
    return statistics.median(gaps)


def _stock_class():
    from diffusers import WanImageToVideoPipeline

    from fourd_core.pipelines.fourdnex import ImageWithEmbedsChecks

    class StockPipeline(ImageWithEmbedsChecks, WanImageToVideoPipeline):
        """diffusers' pipeline with the stock denoising loop; only ``check_inputs`` lets the image come
        with precomputed CLIP features (the check never builds the 2.5 GB CLIP-H)."""

    return StockPipeline


def sampling_runs(pipe, sizes: Sizes, conds: dict, steps: int, device: torch.device):
    """``(run_fourdnex, run_stock)``: one sampling of ``steps`` steps each, taking a step callback."""
    from fourd_core.models.patches import set_fourdnex_enabled
    from fourd_core.pipelines.fourdnex import SamplingConfig, generate_latents, to_pil

    StockPipeline = _stock_class()
    cfg = SamplingConfig(num_frames=sizes.frames, height=sizes.height, width=sizes.width, steps=steps)
    image = torch.rand(sizes.height, sizes.width, 3, generator=torch.Generator().manual_seed(2))
    stock = StockPipeline(**pipe.components)
    stock.set_progress_bar_config(disable=True)
    wide = to_pil(torch.cat([image, image], dim=1))
    out = {}

    def run_fourdnex(cb):
        out["latents"] = generate_latents(pipe, image, "a scene", cfg, conditions=conds,
                                          callback=lambda s, t, l: cb())

    def run_stock(cb):
        set_fourdnex_enabled(pipe.transformer, False)  # the stock Wan forward
        try:
            stock(image=wide, prompt_embeds=conds["prompt_embeds"], negative_prompt_embeds=conds["negative_prompt_embeds"],
                  image_embeds=conds["image_embeds"], height=sizes.height, width=2 * sizes.width,
                  num_frames=sizes.frames, num_inference_steps=steps, guidance_scale=cfg.guidance_scale,
                  output_type="latent", callback_on_step_end=lambda p, i, t, kw: cb())
        finally:
            set_fourdnex_enabled(pipe.transformer, True)

    return run_fourdnex, run_stock, out


def attention_backends(device: torch.device) -> list[tuple[str, str | None]]:
    """(label, diffusers backend) to time: SDPA always; flash / sage where their package imports."""
    found = [("SDPA (native)", None)]
    if device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            found.append(("flash-attn 2", "flash"))
        if importlib.util.find_spec("flash_attn_interface") is not None:
            found.append(("flash-attn 3", "_flash_3"))
        if importlib.util.find_spec("sageattention") is not None:
            found.append(("sage", "sage"))
    return found


def check_sampling(report: Report, sizes: Sizes, pipe, conds, steps: int, device: torch.device) -> dict:
    run_fourdnex, run_stock, out = sampling_runs(pipe, sizes, conds, steps, device)
    for label, backend in attention_backends(device):
        if report.over_budget():
            report.add("sampling", label, None, note="skipped: over --budget-s")
            continue
        try:
            pipe.transformer.set_attention_backend(backend or "native")
            reset_peak(device)
            s = per_step(run_stock, device)
            p_stock = peak(device)
            reset_peak(device)
            f = per_step(run_fourdnex, device)
            report.add("sampling", f"stock Wan I2V, {label}", s, None, p_stock, "per step (2 DiT passes)")
            report.add("sampling", f"4DNeX, {label}", f, f / s, peak(device), "ratio 4DNeX/stock (target <= 1.10)")
        except Exception as exc:  # noqa: BLE001 - a backend that fails here is reported, the check goes on
            report.add("sampling", label, None, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
    pipe.transformer.set_attention_backend("native")
    return out


def check_memory_modes(report: Report, sizes: Sizes, pipe, conds, steps: int, device: torch.device, fresh) -> None:
    from fourd_core.models.memory import MemoryConfig, apply_memory_config, enable_fp8_storage

    if report.over_budget():
        report.add("memory", "--offload group / --fp8", None, note="skipped: over --budget-s")
        return
    if device.type == "cuda":
        apply_memory_config(pipe, MemoryConfig(device=str(device), offload="group"), sizes.dtype)
        run_fourdnex, _, _ = sampling_runs(pipe, sizes, conds, steps, device)
        reset_peak(device)
        report.add("memory", "4DNeX --offload group", per_step(run_fourdnex, device), None, peak(device),
                   "DiT blocks stream from the CPU")
    else:
        report.add("memory", "4DNeX --offload group", None, note="needs CUDA (diffusers group offloading)")
    if report.over_budget():
        report.add("memory", "4DNeX --fp8", None, note="skipped: over --budget-s")
        return
    pipe.transformer = None
    gc.collect()
    pipe.transformer = fresh()  # a resident model again, then fp8 storage as load_pipeline does it
    pipe._fourd_device = device
    enable_fp8_storage(pipe.transformer, sizes.dtype)
    run_fourdnex, _, _ = sampling_runs(pipe, sizes, conds, steps, device)
    reset_peak(device)
    report.add("memory", "4DNeX --fp8 (resident)", per_step(run_fourdnex, device), None, peak(device),
               "layerwise casting, float8_e4m3fn storage")


def check_decode(report: Report, pipe, latents: torch.Tensor, device: torch.device) -> None:
    from fourd_core.pipelines.decode import decode_6d

    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    rgb, _ = decode_6d(pipe, latents.to(device))
    sync(device)
    report.add("VAE decode", f"2 halves, float32, {rgb.shape[0]} frames", time.perf_counter() - t, None, peak(device),
               f"{rgb.shape[1]}x{rgb.shape[2]} per modality")


def check_grid_attention(report: Report, sizes: Sizes, tr, device: torch.device, repeats: int = 3) -> None:
    from fourd_core.models.grid_fused import FusedGeometry, flex_available, fused_attention
    from fourd_core.models.patches import set_fourdnex_enabled

    if report.over_budget():
        report.add("grid attn", "fused", None, note="skipped: over --budget-s")
        return
    v, t, h, w = sizes.grid_views, sizes.grid_times, sizes.height // 8, sizes.width // 8
    heads, d = tr.config.num_attention_heads, tr.config.attention_head_dim
    set_fourdnex_enabled(tr, False)  # the grid runs the stock Wan positions
    try:
        backends = ["gather"] + (["flex"] if flex_available() else [])
        geometry = {b: FusedGeometry.for_transformer(tr, v, t, h, w, b, device) for b in backends}
    finally:
        set_fourdnex_enabled(tr, True)
    n = v * t * geometry["gather"].tokens_per_frame
    g = torch.Generator().manual_seed(3)
    q, k, vv = (torch.randn(1, n, heads, d, generator=g).to(device, sizes.dtype) for _ in range(3))
    label = f"{v} views x {t} lat. frames, {n} tok"
    results = {}
    for b in backends:
        try:
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            ref = fused_attention(q, k, vv, geometry[b])  # first call (compiles flex on CUDA)
            sync(device)
            first = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fused_attention(q, k, vv, geometry[b])
                sync(device)
                times.append(time.perf_counter() - t0)
            results[b] = (statistics.median(times), ref.float())
            base = results["gather"][0]
            note = f"one attention layer; first call {first:.2f} s"
            if b != "gather":
                err = (ref.float() - results["gather"][1]).abs().max().item()
                note += f"; max |flex - gather| {err:.2e}"
            report.add("grid attn", f"fused/{b}, {label}", results[b][0], results[b][0] / base, peak(device), note)
        except Exception as exc:  # noqa: BLE001
            report.add("grid attn", f"fused/{b}", None, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (or --device): same code, for CI")
    ap.add_argument("--steps", type=int, default=3, help="sampling steps per timing (the first is warm-up)")
    ap.add_argument("--device", default=None, help="default: cuda (full), cpu (--tiny)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining sections after this many seconds")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: the full check needs a CUDA GPU; use --tiny on the CPU", file=sys.stderr)
        return 2
    if args.steps < 2:
        print("error: --steps must be >= 2 (the first step is warm-up)", file=sys.stderr)
        return 2
    sizes = Sizes.tiny() if args.tiny else Sizes.full()
    report = Report(device, args.budget_s)
    t = time.perf_counter()
    tr = build_transformer(sizes, device)
    pipe = build_pipeline(sizes, tr, device)
    conds = conditions(sizes, tr, device)
    from fourd_core.distributed.runtime import sequence_length

    tokens = sequence_length(tr, sizes.frames, sizes.height, sizes.width)
    report.add("setup", f"random {sum(p.numel() for p in tr.parameters()) / 1e9:.2f}B DiT + VAE",
               time.perf_counter() - t, None, peak(device), f"{tokens} tokens per DiT pass")
    out = check_sampling(report, sizes, pipe, conds, args.steps, device)
    if "latents" in out:
        check_decode(report, pipe, out["latents"], device)
    check_grid_attention(report, sizes, tr, device)
    check_memory_modes(report, sizes, pipe, conds, args.steps, device, lambda: build_transformer(sizes, device, seed=1))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.print_table(f"\ngpu_check ({'tiny' if args.tiny else 'full'}: {sizes.frames} frames, {sizes.height}x{sizes.width}"
                       f" per modality, {tokens} tokens, {sizes.dtype}) on {name}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
