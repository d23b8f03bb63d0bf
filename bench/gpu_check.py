"""One-shot GPU check: the real 4DNeX shapes on random weights at the real Wan2.1-I2V-14B config.

Measures, in one process, and prints one table (each row with its target where one exists), in this
order (what the budget cuts comes last):

* per-step time (CFG on: two DiT passes per step; the time between step ends, so step 1 with the
  condition encode is never counted) of the 4DNeX path (``generate_latents``) vs diffusers' stock
  ``WanImageToVideoPipeline`` on the same transformer (4DNeX patches off) at the same latent size,
  ordered stock / 4DNeX / stock (A/B/A) with the median of ``--steps`` (>= 4) steps each; SDPA
  (``native``), then cuDNN (``_native_cudnn``) and flash / sage where their packages import;
* a step cache (``--cache``, diffusers hooks through ``fourd_core.models.step_cache``) at real size:
  the time of a skipped step against the plain one, and the speed-up that gives at a skip fraction;
* correctness on CUDA (small sizes, seconds each): group-offloaded vs resident latents (also with
  the first-block cache), flex vs gathered-keys fused attention (fp32, bf16), the compiled flex
  block mask vs the eager one, fp8 storage vs bf16 latents;
* the 4DNeX path with ``--fp8`` weight storage, then with ``--offload group`` (its setup timed as
  its own row): per-step time and peak allocated / reserved CUDA memory;
* the fused grid attention (4Real-Video-V2 view-time pattern) at a real grid size: gathered keys
  vs flex attention (compiled; its first call, which compiles, is timed apart); q/k/v made on the
  device;
* VAE decode (both halves, float32) time and peak.

Every section runs in its own ``try``: a failing section is one ``failed`` row and the others go
on. The table is printed at the end, also after SIGINT / SIGTERM (``timeout -s INT``), and
rewritten to ``--table FILE`` after every row. A section is skipped, with a row saying so, when its
time estimate (scaled by the measured step time) exceeds what is left of ``--budget-s``; a section
still running when the budget ends, or at 3 x its estimate + 60 s, is stopped (SIGALRM) so the
rest of the table survives.

Full mode (default; CUDA; 49 frames, 480x720 per modality = 35,100 tokens, 14B config in bf16
with the RoPE tables and ``_keep_in_fp32_modules`` in float32 as ``from_pretrained`` keeps them,
grid 8 views x 13 latent frames at 480x720)::

    python bench/gpu_check.py --budget-s 480     # one H100 / H200; see bench/gpu_session.sh

``--tiny`` runs the same code at toy sizes (tiny config, 5 frames, 32x48, float32) on the CPU, so
CI keeps it working; sections that need CUDA say so in the table. Random weights: only times,
memory and the correctness checks mean anything. Exit status: 0 all sections ran, 1 a section
failed, 2 bad arguments or no CUDA, 130 / 143 interrupted (the table is printed in every case).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib.util
import os
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: Estimate of one CFG step (2 DiT passes) of Wan2.1-I2V-14B at 35,100 tokens on one H100 with SDPA,
#: from the published Wan2.1 single-GPU H100 timings scaled to this token count (the prior of the
#: skip rule until a step is measured, and the target printed beside the SDPA row).
H100_STEP_ESTIMATE_S = 10.5
#: H100 SXM dense bf16 tensor-core peak (NVIDIA H100 datasheet), for the FLOP floor.
H100_BF16_PEAK_FLOPS = 989e12
RATIO_TARGET = 1.03        # 4DNeX / stock per-step time
DEADLINE_FACTOR, DEADLINE_MARGIN_S = 3.0, 60.0   # a section is stopped after factor x its estimate + margin
OFFLOAD_TARGET = 1.10      # group offload / resident per-step time


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
    def tiny(cls, dtype: torch.dtype = torch.float32) -> "Sizes":
        from fourd_core.models.tiny_preset import TINY_TRANSFORMER, TINY_VAE

        return cls(transformer=dict(TINY_TRANSFORMER), vae=dict(TINY_VAE), dtype=dtype, frames=5, height=32,
                   width=48, grid_views=2, grid_times=2, image_tokens=5)


# ----------------------------------------------------------------------------------------------
# The table
@dataclasses.dataclass
class Target:
    """What a measurement should reach (``text``) and whether it did (None: not judged)."""

    text: str
    ok: bool | None = None

    def __str__(self) -> str:
        return self.text + ("" if self.ok is None else (" ok" if self.ok else " MISS"))


@dataclasses.dataclass
class Row:
    section: str
    variant: str
    seconds: float | None = None
    ratio: float | None = None
    peak: tuple | None = None
    target: Target | str = ""
    note: str = ""


class Report:
    """Rows of the final table; each row is also printed (stderr) when measured and the whole table
    is rewritten to ``table_path`` (if given) after every row, so a killed run keeps its rows."""

    def __init__(self, device: torch.device, budget_s: float, table_path: str | None = None, judge: bool = True):
        self.rows: list[Row] = []
        self.device = device
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.table_path = Path(table_path) if table_path else None
        self.judge = judge  # targets are for the full size on an H100-class GPU
        self.title = "gpu_check"

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def target(self, text: str, ok: bool | None) -> Target:
        return Target(text, ok if self.judge else None)

    def add(self, section: str, variant: str, seconds: float | None = None, ratio: float | None = None,
            peak: tuple | None = None, target: Target | str = "", note: str = "") -> Row:
        row = Row(section, variant, seconds, ratio, peak, target, note)
        self.rows.append(row)
        print(f"[gpu_check {self.elapsed():6.1f}s] {self._fmt(row)}", file=sys.stderr, flush=True)
        self._write()
        return row

    @staticmethod
    def _fmt(row: Row) -> str:
        s = row.seconds
        t = "-" if s is None else (f"{s * 1e3:9.1f} ms" if s < 10 else f"{s:9.2f} s ")
        r = "" if row.ratio is None else f"x{row.ratio:5.3f}"
        p = "-" if row.peak is None else f"{row.peak[0]:6.1f} / {row.peak[1]:6.1f} GiB"
        return f"{row.section:<10} | {row.variant:<46} | {t:>12} | {r:>7} | {p:>19} | {str(row.target):<34} | {row.note}"

    def table(self) -> str:
        head = (f"{'section':<10} | {'variant':<46} | {'time':>12} | {'ratio':>7} | {'peak alloc / reserved':>19} | "
                f"{'target':<34} | note")
        lines = [self.title, head, "-" * len(head)] + [self._fmt(r) for r in self.rows]
        lines.append(f"total {self.elapsed():.1f} s (--budget-s {self.budget_s:.0f})"
                     + ("" if self.judge else "; targets are for the full size on an H100-class GPU: not judged here"))
        return "\n".join(lines) + "\n"

    def _write(self) -> None:
        if self.table_path is None:
            return
        tmp = self.table_path.with_name(self.table_path.name + ".tmp")
        tmp.write_text(self.table())
        os.replace(tmp, self.table_path)

    def print_table(self) -> None:
        print("\n" + self.table(), end="", flush=True)
        self._write()


# ----------------------------------------------------------------------------------------------
# Helpers
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


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast ``model`` to ``dtype`` the way ``from_pretrained(torch_dtype=dtype)`` (and the single-file
    loader, ``fourd_core.models.loading._keep_fp32``) leaves it: parameters of modules named in
    ``_keep_in_fp32_modules`` stay float32, every other parameter becomes ``dtype``, and buffers
    keep the dtype the module made them in (diffusers' ``WanRotaryPosEmbed`` tables: float32).
    ``model.to(dtype)`` instead casts the RoPE tables too. In place; returns ``model``."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        want = torch.float32 if keep & set(name.split(".")) else dtype
        if p.is_floating_point() and p.dtype != want:
            p.data = p.data.to(want)
    return model


def build_transformer(sizes: Sizes, device: torch.device, seed: int = 0):
    """Random ``WanTransformer3DModel`` at ``sizes.transformer``, created on ``device`` in ``sizes.dtype``
    (parameters made in that dtype, no float32 copy of the 14B weights; dtypes as the loader leaves
    them, :func:`cast_like_from_pretrained`), with the 4DNeX patches and random domain embeddings."""
    from diffusers import WanTransformer3DModel

    from fourd_core.models.patches import apply_fourdnex_patches

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(sizes.dtype)
    try:  # WanRotaryPosEmbed builds its tables in float64 -> float32 whatever the default dtype
        with torch.device(device):
            tr = WanTransformer3DModel.from_config({k: v for k, v in sizes.transformer.items() if not k.startswith("_")})
    finally:
        torch.set_default_dtype(previous)
    tr = cast_like_from_pretrained(tr, sizes.dtype).eval().requires_grad_(False)
    inner = tr.config.num_attention_heads * tr.config.attention_head_dim
    return apply_fourdnex_patches(tr, torch.randn(2, inner) * 0.1)


def build_pipeline(sizes: Sizes, transformer, device: torch.device):
    """FourDNeXPipeline around ``transformer`` with a random VAE at ``sizes.vae``; the encoders are the
    tiny ones and never run (the check passes text / CLIP features)."""
    from diffusers import AutoencoderKLWan

    from fourd_core.models.tiny_preset import build_tiny_components
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


def dit_flops(config, tokens: int, text_tokens: int, image_tokens: int = 0) -> float:
    """Matmul FLOPs of the blocks of one Wan DiT forward (2 per multiply-add) at ``tokens`` video
    tokens, ``D`` = heads x head_dim, ``F`` = ffn_dim. Per block: self-attention projections
    ``8 N D^2`` and scores + values ``4 N^2 D``; cross-attention query/output projections ``4 N D^2``,
    key/value projections of the text and the CLIP tokens ``4 (C_t + C_i) D^2``, scores + values
    ``4 N (C_t + C_i) D``; the FFN ``4 N D F``. Wan2.1-I2V-14B at 35,100 tokens, 512 + 257 context
    tokens: ~1.9e15 (embeddings and the head are < 0.1 % and not counted)."""
    d = config.num_attention_heads * config.attention_head_dim
    n, f, c = tokens, config.ffn_dim, text_tokens + image_tokens
    per_block = 8 * n * d * d + 4 * n * n * d + 4 * n * d * d + 4 * c * d * d + 4 * n * c * d + 4 * n * d * f
    return float(config.num_layers * per_block)


def step_gaps(run, device: torch.device) -> list[float]:
    """Run one sampling (``run(callback)``) and return the times between consecutive step ends (a
    run of ``k`` steps gives ``k - 1`` gaps; the first step, with the condition encode, is excluded)."""
    stamps = []

    def stamp(*_a, **_k):
        sync(device)
        stamps.append(time.perf_counter())

    run(stamp)
    return [b - a for a, b in zip(stamps[:-1], stamps[1:])]


def _stock_class():
    from diffusers import WanImageToVideoPipeline

    from fourd_core.pipelines.fourdnex import ImageWithEmbedsChecks

    class StockPipeline(ImageWithEmbedsChecks, WanImageToVideoPipeline):
        """diffusers' pipeline with the stock denoising loop; only ``check_inputs`` lets the image come
        with precomputed CLIP features (the check never builds the 2.5 GB CLIP-H)."""

    return StockPipeline


def sampling_runs(pipe, sizes: Sizes, conds: dict, device: torch.device):
    """``(run_fourdnex, run_stock, out)``: ``run_x(steps, callback)`` samples ``steps`` steps calling
    ``callback()`` after each; ``out["latents"]`` holds the last 4DNeX latents."""
    from fourd_core.models.patches import set_fourdnex_enabled
    from fourd_core.pipelines.fourdnex import SamplingConfig, generate_latents, to_pil

    StockPipeline = _stock_class()
    image = torch.rand(sizes.height, sizes.width, 3, generator=torch.Generator().manual_seed(2))
    stock = StockPipeline(**pipe.components)
    stock.set_progress_bar_config(disable=True)
    wide = to_pil(torch.cat([image, image], dim=1))
    out = {}

    def cfg(steps):
        return SamplingConfig(num_frames=sizes.frames, height=sizes.height, width=sizes.width, steps=steps)

    def run_fourdnex(steps, cb):
        out["latents"] = generate_latents(pipe, image, "a scene", cfg(steps), conditions=conds,
                                          callback=lambda s, t, l: cb())

    def run_stock(steps, cb):
        set_fourdnex_enabled(pipe.transformer, False)  # the stock Wan forward
        try:
            stock(image=wide, prompt_embeds=conds["prompt_embeds"], negative_prompt_embeds=conds["negative_prompt_embeds"],
                  image_embeds=conds["image_embeds"], height=sizes.height, width=2 * sizes.width,
                  num_frames=sizes.frames, num_inference_steps=steps, guidance_scale=cfg(steps).guidance_scale,
                  output_type="latent", callback_on_step_end=lambda p, i, t, kw: cb() or {})
        finally:
            set_fourdnex_enabled(pipe.transformer, True)

    return run_fourdnex, run_stock, out


def timed_steps(run, gaps: int, device: torch.device) -> list[float]:
    """Per-step times of one run with ``gaps`` measured steps (``gaps + 1`` steps in all)."""
    return step_gaps(lambda cb: run(gaps + 1, cb), device)


def attention_backends(device: torch.device) -> list[tuple[str, str, str | None]]:
    """``(label, diffusers backend, reason it cannot run here or None)`` beside SDPA: cuDNN always
    listed; flash / sage where their package imports."""
    found = [("cuDNN (_native_cudnn)", "_native_cudnn", None if device.type == "cuda" else "needs CUDA")]
    if device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            found.append(("flash-attn 2", "flash", None))
        if importlib.util.find_spec("flash_attn_interface") is not None:
            found.append(("flash-attn 3", "_flash_3", None))
        if importlib.util.find_spec("sageattention") is not None:
            found.append(("sage", "sage", None))
    return found


# ----------------------------------------------------------------------------------------------
# Sections
class SectionTimeout(BaseException):
    """Raised by SIGALRM when a section runs past the end of ``--budget-s``."""


class Terminated(BaseException):
    """Raised on SIGTERM so the table is still printed."""


@dataclasses.dataclass
class Ctx:
    """State shared by the sections."""

    args: argparse.Namespace
    sizes: Sizes
    device: torch.device
    report: Report
    step_s: float                       # per-step time used by the estimates (prior, then measured)
    tr: object = None                   # the resident bf16 DiT (patched)
    pipe: object = None
    conds: dict | None = None
    tokens: int = 0
    sdpa_4dnex_s: float | None = None   # measured 4DNeX SDPA step, the baseline of the later ratios
    latents: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        return not self.args.tiny

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def est(self, full_s: float, tiny_s: float) -> float:
        return full_s if self.full else tiny_s

    def fits(self, estimate: float) -> bool:
        return estimate <= self.report.left()


@dataclasses.dataclass
class Section:
    """One section of the check. ``estimate(ctx)``: seconds it is expected to take (the skip rule);
    ``needs``: ``Ctx`` fields an earlier section must have set; ``cuda``: the section needs CUDA."""

    name: str
    label: str
    run: Callable[[Ctx], None]
    estimate: Callable[[Ctx], float]
    needs: tuple = ()
    cuda: bool = False


def section_setup(ctx: Ctx) -> None:
    from fourd_core.distributed.runtime import sequence_length

    reset_peak(ctx.device)
    t = time.perf_counter()
    ctx.tr = build_transformer(ctx.sizes, ctx.device)
    ctx.pipe = build_pipeline(ctx.sizes, ctx.tr, ctx.device)
    ctx.conds = conditions(ctx.sizes, ctx.tr, ctx.device)
    sync(ctx.device)
    ctx.tokens = sequence_length(ctx.tr, ctx.sizes.frames, ctx.sizes.height, ctx.sizes.width)
    rope = {b.dtype for b in ctx.tr.rope.buffers()}
    ctx.report.add("setup", f"random {sum(p.numel() for p in ctx.tr.parameters()) / 1e9:.2f}B DiT + VAE",
                   time.perf_counter() - t, None, peak(ctx.device), "",
                   f"{ctx.tokens} tokens per DiT pass; RoPE tables {', '.join(str(d) for d in rope)}")


def section_sampling_sdpa(ctx: Ctx) -> None:
    """A/B/A: stock, 4DNeX, stock; ``--steps`` timed steps for each of the two."""
    run_fourdnex, run_stock, out = sampling_runs(ctx.pipe, ctx.sizes, ctx.conds, ctx.device)
    n = ctx.args.steps
    ctx.tr.set_attention_backend("native")
    reset_peak(ctx.device)
    a1 = timed_steps(run_stock, (n + 1) // 2, ctx.device)
    p_stock = peak(ctx.device)
    reset_peak(ctx.device)
    b = timed_steps(run_fourdnex, n, ctx.device)
    p_4d = peak(ctx.device)
    a2 = timed_steps(run_stock, n // 2, ctx.device)
    s, f = statistics.median(a1 + a2), statistics.median(b)
    ctx.sdpa_4dnex_s, ctx.step_s, ctx.latents = f, f, out["latents"]
    step_flops = 2 * dit_flops(ctx.tr.config, ctx.tokens, ctx.sizes.text_tokens, ctx.sizes.image_tokens)
    floor = step_flops / H100_BF16_PEAK_FLOPS
    ctx.report.add("sampling", "stock Wan I2V, SDPA (native)", s, None, p_stock,
                   ctx.report.target(f"~{H100_STEP_ESTIMATE_S} s est., floor {floor:.1f} s", s <= H100_STEP_ESTIMATE_S),
                   f"per step (2 DiT passes), median of {len(a1) + len(a2)} (A1 {statistics.median(a1):.3g} s, "
                   f"A2 {statistics.median(a2):.3g} s); {step_flops / s / 1e12:.0f} TFLOP/s")
    ctx.report.add("sampling", "4DNeX, SDPA (native)", f, f / s, p_4d,
                   ctx.report.target(f"ratio <= {RATIO_TARGET}", f / s <= RATIO_TARGET),
                   f"median of {len(b)}, between the two stock runs; ratio 4DNeX/stock")


def section_sampling_backends(ctx: Ctx) -> None:
    run_fourdnex, _, _ = sampling_runs(ctx.pipe, ctx.sizes, ctx.conds, ctx.device)
    m = ctx.args.steps_other
    try:
        for label, backend, why_not in attention_backends(ctx.device):
            if why_not:
                ctx.report.add("sampling", f"4DNeX, {label}", note=f"skipped: {why_not}")
                continue
            est = (m + 1) * ctx.step_s + ctx.est(5, 0.5)
            if not ctx.fits(est):
                ctx.report.add("sampling", f"4DNeX, {label}", note=f"skipped: estimate {est:.0f} s > "
                               f"{ctx.report.left():.0f} s left")
                continue
            try:
                ctx.tr.set_attention_backend(backend)
                reset_peak(ctx.device)
                t = statistics.median(timed_steps(run_fourdnex, m, ctx.device))
                ratio = t / ctx.sdpa_4dnex_s
                target = ctx.report.target("< 1 (faster than SDPA)", ratio < 1) if backend == "_native_cudnn" else ""
                ctx.report.add("sampling", f"4DNeX, {label}", t, ratio, peak(ctx.device), target,
                               f"median of {m}; ratio vs 4DNeX SDPA")
            except Exception as exc:  # noqa: BLE001 - one backend failing is a row, the others go on
                traceback.print_exc()
                ctx.report.add("sampling", f"4DNeX, {label}", note=f"failed: {type(exc).__name__}: {str(exc)[:90]}")
    finally:
        ctx.tr.set_attention_backend("native")


def section_cache(ctx: Ctx) -> None:
    """The real-size cost of a skipped step (random weights: only the step costs mean anything): the
    cache's ``skip_all`` value skips every step after its warm-up; the speed-up at a skip fraction
    follows from the skipped / plain step times."""
    from fourd_core.models.step_cache import STEP_CACHES, step_cache_enabled

    entry = STEP_CACHES[ctx.args.cache]
    run_fourdnex, _, _ = sampling_runs(ctx.pipe, ctx.sizes, ctx.conds, ctx.device)
    m = ctx.args.steps_other
    with step_cache_enabled(ctx.tr, entry.name, entry.skip_all) as stats:
        reset_peak(ctx.device)
        gaps = step_gaps(lambda cb: run_fourdnex(entry.warmup + m, cb), ctx.device)[-m:]
    t = statistics.median(gaps)
    c = t / ctx.sdpa_4dnex_s
    ctx.report.add("cache", f"{entry.name}, skipped step", t, c, peak(ctx.device), "",
                   f"median of {m}; {stats.summary()}; ratio vs the 4DNeX SDPA step without a cache")
    f = ctx.args.cache_skip_fraction
    ctx.report.add("cache", f"{entry.name}, {f:.0%} of steps skipped", None, 1.0 / (1.0 - f + f * c), None, "",
                   "speed-up 1 / (1 - f + f * skipped/plain) at --cache-skip-fraction f (tiny-model fractions: "
                   "bench/bench_caches.py)")


def section_decode(ctx: Ctx) -> None:
    from fourd_core.pipelines.decode import decode_6d

    reset_peak(ctx.device)
    sync(ctx.device)
    t = time.perf_counter()
    rgb, _ = decode_6d(ctx.pipe, ctx.latents.to(ctx.device))
    sync(ctx.device)
    ctx.report.add("VAE decode", f"2 halves, float32, {rgb.shape[0]} frames", time.perf_counter() - t, None,
                   peak(ctx.device), "", f"{rgb.shape[1]}x{rgb.shape[2]} per modality")


# -- correctness checks (small sizes, seconds each) ---------------------------------------------
def _tiny_latents(sizes: Sizes, device: torch.device, steps: int, seed: int, prepare=None,
                  cache: tuple | None = None) -> torch.Tensor:
    """Latents of a ``steps``-step 4DNeX sampling with a fresh tiny pipeline (``prepare(pipe)`` first;
    ``cache``: ``(name, value)`` of a step cache on for the sampling)."""
    from fourd_core.models.step_cache import step_cache_enabled

    tr = build_transformer(sizes, device, seed=seed)
    pipe = build_pipeline(sizes, tr, device)
    if prepare is not None:
        prepare(pipe)
    run, _, out = sampling_runs(pipe, sizes, conditions(sizes, tr, device), device)
    with step_cache_enabled(tr, *(cache or ("none", None))):
        run(steps, lambda: None)
    return out["latents"].float().cpu()


def check_offload_equal(device: torch.device, steps: int = 3) -> tuple[float, float]:
    """``(max |offloaded - resident| / max |resident|, tolerance)``: group offloading moves the same
    weights, so the latents of the same weights and seed are expected equal (float32, tiny config)."""
    from fourd_core.models.memory import MemoryConfig, apply_memory_config

    sizes = Sizes.tiny()
    ref = _tiny_latents(sizes, device, steps, seed=5)
    got = _tiny_latents(sizes, device, steps, seed=5, prepare=lambda p: apply_memory_config(
        p, MemoryConfig(device=str(device), offload="group"), sizes.dtype))
    return ((got - ref).abs().max() / ref.abs().max()).item(), 1e-6


def check_cache_offload_equal(device: torch.device, steps: int = 3) -> tuple[float, float]:
    """``(max |offloaded - resident| / max |resident|, tolerance)`` with the first-block cache skipping
    every step after the first: a skipped block must not need its (not onloaded) weights, and the
    group-offload prefetch order must survive blocks that do not run."""
    from fourd_core.models.memory import MemoryConfig, apply_memory_config

    sizes = Sizes.tiny()
    cache = ("first_block", 1e9)
    ref = _tiny_latents(sizes, device, steps, seed=8, cache=cache)
    got = _tiny_latents(sizes, device, steps, seed=8, cache=cache, prepare=lambda p: apply_memory_config(
        p, MemoryConfig(device=str(device), offload="group"), sizes.dtype))
    return ((got - ref).abs().max() / ref.abs().max()).item(), 1e-6


def check_fp8_close(device: torch.device, steps: int = 3) -> tuple[float, float]:
    """``(||fp8 - bf16|| / ||bf16||, tolerance)`` of the latents after ``steps`` steps: the same bf16
    weights, once resident and once stored in float8_e4m3fn (3 mantissa bits: ~3 % per weight)."""
    from fourd_core.models.memory import enable_fp8_storage

    sizes = Sizes.tiny(torch.bfloat16)
    ref = _tiny_latents(sizes, device, steps, seed=6)
    got = _tiny_latents(sizes, device, steps, seed=6, prepare=lambda p: enable_fp8_storage(p.transformer, sizes.dtype))
    return ((got - ref).norm() / ref.norm()).item(), 0.05


def check_flex_gather(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(max |flex - gather|, tolerance)`` of fused attention on unit-normal q/k/v (3 views x 4
    latent frames x 96 tokens, 4 heads of 64) made on ``device``."""
    from fourd_core.kernels.fused import FusedGeometry, fused_attention

    g = torch.Generator(device).manual_seed(7)
    q, k, v = (torch.randn(1, 3 * 4 * 96, 4, 64, generator=g, device=device, dtype=dtype) for _ in range(3))
    flex = fused_attention(q, k, v, FusedGeometry(3, 4, 96, "flex", device))
    gather = fused_attention(q, k, v, FusedGeometry(3, 4, 96, "gather", device))
    return (flex.float() - gather.float()).abs().max().item(), (1e-4 if dtype == torch.float32 else 2e-2)


def check_block_mask(device: torch.device) -> tuple[float, float]:
    """``(blocks that differ, 0)`` between the compiled ``create_block_mask`` (used on CUDA) and the
    eager one, and between either and the dense mask reduced to 128x128 blocks (3 views x 4 latent
    frames x 96 tokens = 9 x 9 blocks)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from fourd_core.kernels.fused import fused_block_mask, fused_dense_mask, fused_mask_mod

    v, t, s = 3, 4, 96
    n = v * t * s
    compiled = fused_block_mask(v, t, s, device)  # compiled on CUDA
    eager = create_block_mask(fused_mask_mod(v, t, s), None, None, n, n, device=device)
    dense = fused_dense_mask(v, t, s, device).reshape(n // 128, 128, n // 128, 128).any(3).any(1)
    a, b = compiled.to_dense()[0, 0].bool(), eager.to_dense()[0, 0].bool()
    return float((a != b).sum().item() + (b != dense).sum().item()), 0.0


CHECKS = (
    ("group offload vs resident latents", check_offload_equal, "max rel. diff"),
    ("flex vs gathered-keys attention, fp32", check_flex_gather, "max abs diff"),
    ("flex vs gathered-keys attention, bf16", lambda d: check_flex_gather(d, torch.bfloat16), "max abs diff"),
    ("compiled vs eager flex block mask", check_block_mask, "blocks differing"),
    ("fp8 storage vs bf16 latents", check_fp8_close, "rel. L2 diff"),
    ("first_block cache: group offload vs resident", check_cache_offload_equal, "max rel. diff"),
)


def section_checks(ctx: Ctx) -> None:
    for label, fn, what in CHECKS:
        try:
            reset_peak(ctx.device)
            sync(ctx.device)
            t = time.perf_counter()
            value, tol = fn(ctx.device)
            sync(ctx.device)
            ctx.report.add("check", label, time.perf_counter() - t, None, peak(ctx.device),
                           Target(f"<= {tol:g}", value <= tol), f"{what} {value:.3g}")
        except Exception as exc:  # noqa: BLE001 - one check failing is a row, the others go on
            traceback.print_exc()
            ctx.report.add("check", label, note=f"failed: {type(exc).__name__}: {str(exc)[:90]}")


def section_grid_attention(ctx: Ctx, repeats: int = 3) -> None:
    from fourd_core.kernels.fused import FusedGeometry, flex_available, fused_attention

    sizes, device, tr = ctx.sizes, ctx.device, ctx.tr  # only the config: the model may be offloaded by now
    v, t, h, w = sizes.grid_views, sizes.grid_times, sizes.height // 8, sizes.width // 8
    heads, d = tr.config.num_attention_heads, tr.config.attention_head_dim
    p_t, p_h, p_w = tr.config.patch_size
    n = v * t * (h // p_h) * (w // p_w)
    g = torch.Generator(device).manual_seed(3)
    q, k, vv = (torch.randn(1, n, heads, d, generator=g, device=device, dtype=sizes.dtype) for _ in range(3))
    label = f"{v} views x {t} lat. frames, {n} tok"
    base = None
    for b in ["gather"] + (["flex"] if flex_available() else []):
        try:
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            geometry = FusedGeometry(v, t, (h // p_h) * (w // p_w), b, device)  # flex: builds the block mask
            sync(device)
            setup = time.perf_counter() - t0
            t0 = time.perf_counter()
            ref = fused_attention(q, k, vv, geometry)  # first call (compiles flex on CUDA)
            sync(device)
            first = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fused_attention(q, k, vv, geometry)
                sync(device)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            note = f"one attention layer, median of {repeats}; geometry/mask {setup:.2f} s, first call {first:.2f} s"
            if b == "gather":
                base = (med, ref.float())
            else:
                if base is not None:
                    note += f"; max abs(flex - gather) {(ref.float() - base[1]).abs().max().item():.2e}"
            ctx.report.add("grid attn", f"fused/{b}, {label}", med, None if base is None else med / base[0],
                           peak(device), "", note)
            del ref
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            ctx.report.add("grid attn", f"fused/{b}, {label}", note=f"failed: {type(exc).__name__}: {str(exc)[:90]}")


def section_fp8(ctx: Ctx) -> None:
    """A fresh model stored in fp8 (as ``load_pipeline`` does it); the bf16 model waits on the CPU
    for the group-offload section."""
    from fourd_core.models.memory import enable_fp8_storage

    bf16 = ctx.pipe.transformer
    t = time.perf_counter()
    if ctx.cuda:
        bf16.to("cpu")
    try:
        reset_peak(ctx.device)
        fp8 = build_transformer(ctx.sizes, ctx.device, seed=1)
        enable_fp8_storage(fp8, ctx.sizes.dtype)
        ctx.pipe.transformer = fp8
        ctx.pipe._fourd_device = ctx.device
        sync(ctx.device)
        ctx.report.add("memory", "fp8 setup (bf16 DiT to CPU, fp8 DiT built)", time.perf_counter() - t, None,
                       peak(ctx.device), "", "layerwise casting, float8_e4m3fn storage")
        run_fourdnex, _, _ = sampling_runs(ctx.pipe, ctx.sizes, ctx.conds, ctx.device)
        reset_peak(ctx.device)
        s = statistics.median(timed_steps(run_fourdnex, ctx.args.steps_other, ctx.device))
        ctx.report.add("memory", "4DNeX --fp8 (resident)", s, s / ctx.sdpa_4dnex_s, peak(ctx.device), "",
                       f"median of {ctx.args.steps_other}; ratio vs resident bf16")
    finally:
        ctx.pipe.transformer = bf16
        fp8 = None
        gc.collect()


def section_offload(ctx: Ctx) -> None:
    from fourd_core.models.memory import MemoryConfig, apply_memory_config

    reset_peak(ctx.device)
    t = time.perf_counter()
    apply_memory_config(ctx.pipe, MemoryConfig(device=str(ctx.device), offload="group"), ctx.sizes.dtype)
    sync(ctx.device)
    ctx.report.add("memory", "offload setup (group, 1 block, CUDA stream)", time.perf_counter() - t, None,
                   peak(ctx.device), "", "enable_group_offload: DiT blocks to pinned CPU memory")
    run_fourdnex, _, _ = sampling_runs(ctx.pipe, ctx.sizes, ctx.conds, ctx.device)
    reset_peak(ctx.device)
    s = statistics.median(timed_steps(run_fourdnex, ctx.args.steps_other, ctx.device))
    ratio = s / ctx.sdpa_4dnex_s
    ctx.report.add("memory", "4DNeX --offload group", s, ratio, peak(ctx.device),
                   ctx.report.target(f"ratio <= {OFFLOAD_TARGET}", ratio <= OFFLOAD_TARGET),
                   f"median of {ctx.args.steps_other}; ratio vs resident")


def _sampling_estimate(ctx: Ctx, steps: int, runs: int = 1) -> float:
    return steps * ctx.step_s + runs * ctx.est(4.0, 0.3)


SECTIONS: list[Section] = [  # in order of priority: what is cut by the budget comes last
    Section("setup", "random DiT + VAE", section_setup, lambda c: c.est(60, 15)),
    Section("sampling", "stock / 4DNeX / stock, SDPA", section_sampling_sdpa,
            lambda c: _sampling_estimate(c, 2 * c.args.steps + 3, 3), needs=("pipe",)),
    Section("sampling", "4DNeX, other attention backends", section_sampling_backends,
            lambda c: _sampling_estimate(c, c.args.steps_other + 1) if c.cuda else 0.0, needs=("pipe", "sdpa_4dnex_s")),
    Section("cache", "step cache (--cache)", section_cache, lambda c: _sampling_estimate(c, 2) + c.est(5, 0.5),
            needs=("pipe", "sdpa_4dnex_s")),
    Section("check", "CUDA correctness checks", section_checks, lambda c: c.est(45, 10), cuda=True),
    Section("memory", "4DNeX --fp8", section_fp8, lambda c: c.est(30, 2) + _sampling_estimate(c, c.args.steps_other + 1),
            needs=("pipe", "sdpa_4dnex_s")),
    Section("memory", "4DNeX --offload group", section_offload,
            lambda c: c.est(40, 2) + 1.2 * _sampling_estimate(c, c.args.steps_other + 1),
            needs=("pipe", "sdpa_4dnex_s"), cuda=True),
    Section("grid attn", "fused view-time attention", section_grid_attention, lambda c: c.est(60, 3), needs=("tr",)),
    Section("VAE decode", "2 halves, float32", section_decode, lambda c: c.est(25, 3), needs=("pipe", "latents")),
]


@contextlib.contextmanager
def _deadline(seconds: float):
    """SIGALRM -> :class:`SectionTimeout` after ``seconds`` (main thread only; else no deadline)."""
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def on_alarm(signum, frame):
        raise SectionTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_sections(ctx: Ctx, sections: list[Section]) -> int:
    """Run ``sections`` in order, one row per skip or failure; returns the number that failed.
    SIGINT (KeyboardInterrupt) and SIGTERM (:class:`Terminated`) propagate after a row naming the
    sections not run (also when they land between two sections)."""
    failed = 0
    for i, sec in enumerate(sections):
        rep = ctx.report
        try:
            failed += _run_section(ctx, sec)
        except (KeyboardInterrupt, Terminated) as exc:
            rest = ", ".join(s.label for s in sections[i + 1:]) or "none"
            rep.add(sec.name, sec.label, note=f"interrupted ({'SIGINT' if isinstance(exc, KeyboardInterrupt) else 'SIGTERM'})"
                                              f" in or just after this section, at {rep.elapsed():.0f} s; not run: {rest}")
            raise
    return failed


def _run_section(ctx: Ctx, sec: Section) -> int:
    """One section with its skip rules, its deadline and its own ``try``; 1 if it failed."""
    rep = ctx.report
    if sec.cuda and not ctx.cuda:
        rep.add(sec.name, sec.label, note="skipped: needs CUDA (runs in the GPU session)")
        return 0
    missing = [n for n in sec.needs if getattr(ctx, n) is None]
    if missing:
        rep.add(sec.name, sec.label, note=f"not run: an earlier section did not set {', '.join(missing)}")
        return 0
    est = sec.estimate(ctx)
    if est > rep.left():
        rep.add(sec.name, sec.label, note=f"skipped: estimate {est:.0f} s > {max(rep.left(), 0):.0f} s left of --budget-s")
        return 0
    left = rep.left()
    limit = min(left, DEADLINE_FACTOR * est + DEADLINE_MARGIN_S)  # a stuck compile must not eat the whole window
    where = ("at the end of --budget-s" if limit == left else
             f"after {limit:.0f} s ({DEADLINE_FACTOR:g} x estimate + {DEADLINE_MARGIN_S:g} s)")
    try:
        with _deadline(limit):
            sec.run(ctx)
        return 0
    except SectionTimeout:
        rep.add(sec.name, sec.label, note=f"failed: still running {where} (estimate was {est:.0f} s)")
        return 1
    except Exception as exc:  # noqa: BLE001 - a failing section is a row, the next one runs
        traceback.print_exc()
        rep.add(sec.name, sec.label, note=f"failed: {type(exc).__name__}: {str(exc)[:100]}")
        return 1
    finally:
        gc.collect()
        if ctx.cuda:
            torch.cuda.empty_cache()


def import_check() -> int:
    """Import everything the sections use; print versions. 0 when all import (the session's gate)."""
    mods = ["torch", "diffusers", "transformers", "accelerate", "safetensors", "einops", "huggingface_hub",
            "PIL", "numpy", "fourd_core.pipelines.fourdnex", "fourd_core.pipelines.decode",
            "fourd_core.models.memory", "fourd_core.models.grid_fused", "fourd_core.models.step_cache",
            "fourd_core.models.tiny_preset", "fourd_core.distributed.runtime", "diffusers.hooks"]
    bad = []
    for m in mods:
        try:
            importlib.import_module(m)
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{m} ({type(exc).__name__}: {str(exc)[:120]})")
    import torch as t

    info = {"python": sys.version.split()[0], "torch": t.__version__, "cuda": t.version.cuda,
            "gpu": t.cuda.get_device_name(0) if t.cuda.is_available() else None}
    for m in ("diffusers", "transformers", "accelerate"):
        mod = sys.modules.get(m)
        info[m] = getattr(mod, "__version__", None)
    info["diffusers_from"] = os.path.dirname(getattr(sys.modules.get("diffusers"), "__file__", "") or "")
    print("import check:", " ".join(f"{k}={v}" for k, v in info.items()))
    if bad:
        print("import check FAILED: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


def _on_signal(signum, frame):
    raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (or --device): same code, for CI")
    ap.add_argument("--steps", type=int, default=4, help="timed steps for each side of the 4DNeX/stock ratio (>= 2; "
                                                         "the target needs >= 4)")
    ap.add_argument("--steps-other", type=int, default=2, help="timed steps of the other sampling rows")
    ap.add_argument("--device", default=None, help="default: cuda (full), cpu (--tiny)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="no section starts that its estimate says would "
                                                                 "end after this many seconds; a running one stops")
    ap.add_argument("--table", default=None, help="also write the table to this file (rewritten after every row)")
    ap.add_argument("--cache", default="first_block", choices=["first_block", "taylorseer"],
                    help="step cache of the cache section (fourd_core.models.step_cache)")
    ap.add_argument("--cache-skip-fraction", type=float, default=0.5,
                    help="fraction of skipped steps for the cache speed-up row (measure it with bench/bench_caches.py)")
    ap.add_argument("--import-check", action="store_true", help="only import what the sections need and exit")
    args = ap.parse_args(argv)
    if args.import_check:
        return import_check()
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: the full check needs a CUDA GPU; use --tiny on the CPU", file=sys.stderr)
        return 2
    if args.steps < 2 or args.steps_other < 1:
        print("error: --steps must be >= 2 and --steps-other >= 1", file=sys.stderr)
        return 2
    import threading

    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    sizes = Sizes.tiny() if args.tiny else Sizes.full()
    report = Report(device, args.budget_s, args.table, judge=not args.tiny)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    report.title = (f"gpu_check ({'tiny' if args.tiny else 'full'}: {sizes.frames} frames, {sizes.height}x{sizes.width} per "
                    f"modality, {sizes.dtype}) on {name}, torch {torch.__version__}")
    ctx = Ctx(args, sizes, device, report, step_s=H100_STEP_ESTIMATE_S if not args.tiny else 0.3)
    code = 0
    try:
        code = 1 if run_sections(ctx, SECTIONS) else 0
    except (KeyboardInterrupt, Terminated) as exc:
        code = 130 if isinstance(exc, KeyboardInterrupt) else 143
        if not any("interrupted" in r.note for r in report.rows):  # it landed between two sections
            report.add("stopped", "-", note=f"interrupted ({'SIGINT' if code == 130 else 'SIGTERM'}) after "
                                            f"{report.elapsed():.0f} s between sections")
    finally:
        report.title += f", {ctx.tokens} tokens"
        report.print_table()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
