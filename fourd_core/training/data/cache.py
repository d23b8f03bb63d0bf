"""The latent cache: VAE latents, text and CLIP embeddings computed once (``prepare``), read by the
datasets of :mod:`.datasets`. Everything is ``.safetensors`` (no pickle) written atomically.

On-disk layout::

    <cache>/
      cache.json                      {"format": "fourd.latent_cache", "version": 1, "kind": "grid" | "fourdnex",
                                       "config": {...}, "config_hash": "...", "encoders": {...},
                                       "empty_text": "<sha256 of ''>"}
      samples/<name>.safetensors      one file per sample (tensors below); header metadata "fourd_cache" =
                                      JSON {format, version, kind, name, config_hash, prompt, text_key,
                                      text_length, source, ...}: the completion marker
      text/<sha256(prompt)>.safetensors   {"text_embeds": [L, D]}: UMT5 output of one prompt, cut to its
                                      L tokens (datasets zero-pad to 512, what diffusers' encode_prompt returns)
      reports/prepare-rank<r>-of-<N>.json  the last run of rank r: written / skipped / bad samples by name

Sample tensors, ``kind == "grid"`` (pixel grid ``V x T`` of ``H x W``; ``T_lat = (T - 1) / 4 + 1``,
``h, w = H / 8, W / 8``)::

    latents     [V, 16, T_lat, h, w]  float   every row VAE-encoded on its own, VAE-normalised (the targets)
    condition   [V, 16, T_lat, h, w]  float   the grid sampler's I2V condition: rows encoded from the
                                              known pixels (row 0, column 0), mid-gray elsewhere;
                                              posterior mode, as grid.sample_window does
    mask        [V, 4, T_lat, h, w]   uint8   the I2V mask channels of those known pixels (latent_mask)
    known       [V, T_lat]            uint8   latent frames fully determined by known pixels
                                              (fully_known_latents: row 0 and, without holes, column 0)
    valid       [V, T_lat, h, w]      uint8   loss mask: latent pixels whose 8 x 8 patch is valid in all
                                              their pixel frames (pseudo-grid warps; all 1 otherwise)
    clip_rows   [V, N_img, D_img]     float   CLIP (penultimate layer) of each row's first frame I[v, 0]
    clip_cols   [T_lat, N_img, D_img] float   CLIP of the fixed-view frame I[0, 4 tau] for column tau

``kind == "fourdnex"`` (one modality ``H x W``; F = num_frames)::

    rgb_latents [16, T_lat, h, w]     float   VAE-normalised RGB video latents
    xyz_latents [16, T_lat, h, w]     float   VAE-normalised XYZ latents, *not* modality-normalised
                                              (the dataset applies (z + 0.13) / 1.70, as the official one)
    condition   [16, T_lat, h, 2w]    float   VAE-normalised posterior mode of the condition video
                                              [RGB_0 | sloped plane] + gray frames (inference's prepare_latents)
    clip        [N_img, D_img]        float   CLIP of the first RGB frame
    image       [H, W, 3]             uint8   that frame (8-bit, truncated as the official first-frame PNG)

Posterior sample or mode: the *targets* (``latents``, ``rgb_latents``, ``xyz_latents``) are a
posterior **sample** by default (``CacheConfig.latent = "sample"``), as 4DNeX's
``build_wan_dataset.py`` stored them, so a fine-tune of the released LoRA sees targets of the same
distribution; the noise is seeded per sample (``seed_for(seed, name)``), so a rerun on any rank
gives the same file. ``"mode"`` stores the posterior mean instead. The *conditions* are always the
mode, as both samplers encode them (4DNeX's inference ``prepare_latents``; the grid's
``encode_rows``); the official 4DNeX trainer re-encoded its condition with ``sample()`` at every
step, which this cache does not reproduce. Prompts are encoded with diffusers' ``encode_prompt``
(``prompt_clean``, 512 tokens), as both samplers do; the official cache skipped ``prompt_clean``
(the same embedding unless the caption has HTML entities or repeated whitespace).

Ranks: ``prepare`` on rank ``r`` of ``N`` (from :class:`accelerate.PartialState` under
``accelerate launch`` / ``torchrun``, or given) takes samples ``r, r + N, r + 2N, ...``. Resuming:
a sample whose file exists with this cache's ``config_hash`` (and whose text file exists) is
skipped; the files are written through :func:`fourd_core.util.atomic.atomic_path`, so a killed run
leaves no partial file (a temporary of a dead process is removed by the next run). A sample that
cannot be read is reported by name and counted, and the run goes on; models load only when the
first sample has been read, so an empty or all-bad dataset is an :class:`InputError` before any
model loads (and leaves nothing behind).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch

from ...errors import InputError
from ...util.atomic import atomic_path, ensure_writable_dir, remove_stale_temporaries, write_text_atomic
from .clips import FOURDNEX, GRID, GridClip, RGBXYZClip, SampleSource
from .frames import seed_for

CACHE_FORMAT = "fourd.latent_cache"
CACHE_VERSION = 1
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass
class CacheConfig:
    """How latents are stored.

    Attributes:
        latent: ``"sample"`` (posterior sample, official 4DNeX) or ``"mode"`` (posterior mean)
            for the targets; conditions are always the mode (module docstring).
        seed: base seed of the posterior samples (per sample ``seed_for(seed, name)``).
        dtype: storage dtype of latents and embeddings: ``"float32"`` (default), ``"bfloat16"``
            or ``"float16"``; datasets return float32.
        text_length: the text encoder's sequence length (512 for Wan).
        model: a free-form name of the encoders (e.g. the base model path); part of the cache's
            identity, so a cache made with other encoders is not resumed by mistake.
    """

    latent: str = "sample"
    seed: int = 0
    dtype: str = "float32"
    text_length: int = 512
    model: str = ""

    def validate(self) -> None:
        """Raise :class:`InputError` naming the fix for any invalid field."""
        if self.latent not in ("sample", "mode"):
            raise InputError(f"latent must be 'sample' (posterior sample, official) or 'mode', got {self.latent!r}.")
        if self.dtype not in STORAGE_DTYPES:
            raise InputError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {self.dtype!r}.")
        if not isinstance(self.text_length, int) or self.text_length < 1:
            raise InputError(f"text_length must be a positive integer (Wan: 512), got {self.text_length}.")


@dataclasses.dataclass
class PrepareReport:
    """What one ``prepare`` call did on this rank.

    Attributes:
        rank, world_size: this process' share (samples ``rank::world_size``).
        total: samples in this share. written: computed now. skipped: already finished.
        bad: ``[{"name", "error"}]`` samples that could not be read (not in the cache).
        global_ok: finished samples (written + skipped) over all ranks, when known (gathered
            through accelerate), else this rank's.
    """

    rank: int
    world_size: int
    total: int = 0
    written: int = 0
    skipped: int = 0
    bad: list = dataclasses.field(default_factory=list)
    global_ok: int = 0

    @property
    def ok(self) -> int:
        return self.written + self.skipped


# ----------------------------------------------------------------------------------------------
# Encoders
class CacheEncoders:
    """The VAE, UMT5 and CLIP of a diffusers Wan I2V pipeline, as the cache uses them.

    Args:
        pipe: e.g. ``load_pipeline(ModelSpec(...))[0]`` (a :class:`~fourd_core.pipelines.fourdnex.FourDNeXPipeline`);
            the DiT is not used.
        device: where to encode (default: the pipeline's execution device).
    """

    def __init__(self, pipe, device=None):
        self.pipe = pipe
        self.device = torch.device(device) if device is not None else pipe._execution_device

    @classmethod
    def from_spec(cls, spec, memory=None, device=None) -> "CacheEncoders":
        """Load through :func:`fourd_core.models.loading.load_pipeline` (this loads the DiT too)."""
        from ...pipelines.assemble import load_pipeline

        pipe, _ = load_pipeline(spec, memory)
        return cls(pipe, device)

    def describe(self) -> dict:
        """Shapes of what the encoders produce (stored in ``cache.json``)."""
        p = self.pipe
        return {"vae_z_dim": int(p.vae.config.z_dim), "text_dim": int(p.text_encoder.config.d_model),
                "image_dim": int(p.image_encoder.config.hidden_size) if p.image_encoder is not None else None,
                "vae": type(p.vae).__name__, "text_encoder": type(p.text_encoder).__name__}

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """VAE-encode one video.

        Args:
            video: ``[3, F, H, W]`` in [-1, 1]. mode: ``"sample"`` or ``"mode"``.
            generator: CPU generator of the posterior sample.
        Returns:
            ``[16, T_lat, H / 8, W / 8]`` float32 on the CPU, normalised with the VAE's per-channel
            ``latents_mean`` / ``latents_std`` (what the DiT sees).
        """
        from diffusers.utils.torch_utils import get_module_execution_device

        from ...pipelines.decode import vae_latent_stats

        vae = self.pipe.vae
        dev = get_module_execution_device(vae)
        dist = vae.encode(video[None].to(device=dev, dtype=vae.dtype)).latent_dist
        z = dist.sample(generator) if mode == "sample" else dist.mode()
        z = z.float()
        mean, inv_std = vae_latent_stats(vae, z)
        return ((z - mean) * inv_std)[0].cpu()

    @torch.no_grad()
    def encode_text(self, prompt: str, text_length: int = 512) -> torch.Tensor:
        """UMT5 embedding of ``prompt``, ``[L, D]`` float32 on the CPU, cut to its ``L`` tokens
        (diffusers' ``encode_prompt``, which zero-pads the rest to ``text_length``)."""
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

        pe, _ = self.pipe.encode_prompt(prompt=prompt, do_classifier_free_guidance=False,
                                        max_sequence_length=text_length, device=self.device)
        ids = self.pipe.tokenizer([prompt_clean(prompt)], padding="max_length", max_length=text_length,
                                  truncation=True, add_special_tokens=True, return_attention_mask=True)
        n = int(sum(ids["attention_mask"][0]))
        return pe[0, :n].float().cpu()

    @torch.no_grad()
    def encode_clip(self, images: list) -> torch.Tensor | None:
        """CLIP penultimate features of PIL images, ``[N, N_img, D_img]`` float32 (None without CLIP)."""
        if self.pipe.image_encoder is None:
            return None
        return self.pipe.encode_image(images, self.device).float().cpu()


# ----------------------------------------------------------------------------------------------
# Per-kind tensors
def grid_tensors(clip: GridClip, enc: CacheEncoders, cfg: CacheConfig, generator: torch.Generator) -> dict:
    """The cache tensors of one grid sample (module docstring, ``kind == "grid"``).

    Raises:
        InputError: frames not ``[V, T, H, W, 3]`` with ``T = 4k + 1`` and ``H, W`` multiples of 16.
    """
    from ...pipelines.fourdnex import to_pil
    from ...pipelines.grid_canvas import fully_known_latents, latent_mask

    v, t, h, w, c = clip.frames.shape
    if c != 3 or (t - 1) % 4 or h % 16 or w % 16:
        raise InputError(f"{clip.name}: grid frames must be [V, 4k+1, H, W, 3] with H, W multiples of 16, got "
                         f"{list(clip.frames.shape)}.")
    x = clip.frames.float().clamp(0, 1) * 2 - 1                              # [V, T, H, W, 3]
    known = clip.known()
    lat, cond = [], []
    for k in range(v):
        row = x[k].permute(3, 0, 1, 2)
        lat.append(enc.encode_video(row, cfg.latent, generator))
        if k == 0 and cfg.latent == "mode" and bool(known[0].min() >= 1):
            cond.append(lat[0])                                              # identical encode
        else:
            cond.append(enc.encode_video(row * known[k][None], "mode"))
    t_lat = lat[0].shape[1]
    cols = [min(4 * tau, t - 1) for tau in range(t_lat)]
    out = {"latents": torch.stack(lat), "condition": torch.stack(cond),
           "mask": latent_mask(known).to(torch.uint8),
           "known": fully_known_latents(known).to(torch.uint8),
           "valid": latent_mask(clip.valid_pixels()).amin(dim=1).to(torch.uint8)}
    rows = enc.encode_clip([to_pil(im) for im in clip.frames[:, 0]])
    if rows is not None:
        out["clip_rows"] = rows
        out["clip_cols"] = enc.encode_clip([to_pil(im) for im in clip.frames[0, cols]])
    return out


def fourdnex_tensors(clip: RGBXYZClip, enc: CacheEncoders, cfg: CacheConfig, generator: torch.Generator) -> dict:
    """The cache tensors of one 4DNeX sample (module docstring, ``kind == "fourdnex"``).

    Raises:
        InputError: frames not ``[4k + 1, H, W, 3]`` with ``H, W`` multiples of 16, or RGB and XYZ
            of different shapes.
    """
    from PIL import Image

    from ...pipelines.xyz_init import sloped_plane
    from ...pipelines.conditioning import condition_video

    f, h, w, c = clip.rgb.shape
    if c != 3 or (f - 1) % 4 or h % 16 or w % 16 or clip.xyz.shape != clip.rgb.shape:
        raise InputError(f"{clip.name}: RGB and XYZ must be [4k+1, H, W, 3] with H, W multiples of 16, got "
                         f"{list(clip.rgb.shape)} and {list(clip.xyz.shape)}.")
    rgb = clip.rgb.float() * 2 - 1
    out = {"rgb_latents": enc.encode_video(rgb.permute(3, 0, 1, 2), cfg.latent, generator),
           "xyz_latents": enc.encode_video(clip.xyz.float().clamp(-1, 1).permute(3, 0, 1, 2), cfg.latent, generator)}
    # the official first-frame PNG: truncated to 8 bits, used for both the condition and CLIP
    image = (clip.rgb[0].float().numpy() * 255).clip(0, 255).astype("uint8")
    rgb0 = torch.from_numpy(image).float().div(255).mul(2).sub(1).permute(2, 0, 1)[None]
    plane = sloped_plane(h, w).permute(2, 0, 1)[None]
    out["condition"] = enc.encode_video(condition_video(rgb0, plane, f)[0], "mode")
    emb = enc.encode_clip([Image.fromarray(image, mode="RGB")])
    if emb is not None:
        out["clip"] = emb[0]
    out["image"] = torch.from_numpy(image)
    return out


# ----------------------------------------------------------------------------------------------
# prepare
def text_key(prompt: str) -> str:
    """File stem of a prompt's text embedding: ``sha256(prompt)`` (as the official cache)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def read_cache_json(cache_dir: str | Path) -> dict | None:
    """The ``cache.json`` of a cache folder, or None if there is none.

    Raises:
        InputError: a ``cache.json`` that is not this format (or damaged).
    """
    p = Path(cache_dir) / "cache.json"
    if not p.is_file():
        return None
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{p} is damaged ({exc}); delete the cache folder and run prepare again.") from None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT:
        raise InputError(f"{p} is not a FourD latent cache (format {doc.get('format') if isinstance(doc, dict) else None!r}).")
    if int(doc.get("version", 0)) > CACHE_VERSION:
        raise InputError(f"{p} has cache version {doc['version']}; update ComfyUI-FourD to read it.")
    return doc


def _sample_meta(path: Path) -> dict | None:
    """The completion marker of a finished sample file, or None (missing / damaged)."""
    from safetensors import safe_open

    from ...models.weights import check_safetensors_complete

    if not path.is_file():
        return None
    try:
        check_safetensors_complete(path)
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("fourd_cache", "null"))
    except Exception:  # noqa: BLE001 - any damage means: not finished
        return None


def _check_writable(cache_dir: Path) -> None:
    """Refuse a cache folder that cannot be written, without creating anything (nothing is left
    behind when the run then fails)."""
    import os

    for p in (cache_dir, *cache_dir.parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(f"Cache folder {cache_dir} cannot be created: {p} is a file. Choose another folder.")
            if not os.access(p, os.W_OK | os.X_OK):
                raise InputError(f"Cache folder {cache_dir} is not writable ({p}: permission denied). Choose a folder "
                                 "you can write to.")
            return


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int, object]:
    if (rank is None) != (world_size is None):
        raise InputError("Give both rank and world_size, or neither (then accelerate's PartialState decides).")
    if rank is not None:
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise InputError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}.")
        return rank, world_size, None
    from accelerate import PartialState

    if getattr(PartialState, "_shared_state", {}).get("initialized"):
        state = PartialState()  # the trainer's (or accelerate launch's) state
    else:
        # without an accelerator PartialState() under torchrun would see one process: ask for CPU ranks
        has_acc = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
        state = PartialState(cpu=not has_acc)
    return int(state.process_index), int(state.num_processes), state


def prepare(source: SampleSource, cache_dir: str | Path, encoders: CacheEncoders | Callable[[], CacheEncoders],
            config: CacheConfig | None = None, *, rank: int | None = None, world_size: int | None = None,
            log: Callable[[str], None] | None = None) -> PrepareReport:
    """Fill the latent cache ``cache_dir`` from ``source`` (layout: module docstring).

    Args:
        source: a reader (:class:`~fourd_core.training.data.clips.SampleSource`): grid sources
            make a ``"grid"`` cache, 4DNeX sources a ``"fourdnex"`` one.
        cache_dir: the cache folder (created; resumed when it holds a cache of the same config).
        encoders: a :class:`CacheEncoders`, or a zero-argument callable returning one, called only
            once the first sample has been read (an all-bad dataset loads no model).
        config: :class:`CacheConfig`.
        rank, world_size: this process' share; default from ``accelerate.PartialState``.
        log: ``log(message)`` for progress and bad samples (default: stderr, prefixed by the rank).
    Returns:
        :class:`PrepareReport` of this rank.
    Raises:
        InputError: an empty source, a bad config, a cache folder that is not writable or holds a
            cache of another kind or config (the message lists the differing settings), or no
            sample readable at all (the first errors are named) - all before any model loads.
            "At all" means over every rank when they run under one process group (counts gathered
            through accelerate); with an explicit ``rank`` / ``world_size`` and no process group it
            means this rank's share.
        WeightsError: from loading the encoders. DiskFullError: no room (no partial file is left).
    """
    config = config or CacheConfig()
    config.validate()
    if source.kind not in (GRID, FOURDNEX):
        raise InputError(f"Unknown source kind {source.kind!r}; use a grid or a 4DNeX reader.")
    names = source.names()
    if not names:
        raise InputError("The dataset is empty: the reader found no samples.")
    rank, world, state = _rank_world(rank, world_size)
    say = log or (lambda m: print(f"[fourd prepare {rank}/{world}] {m}", file=sys.stderr, flush=True))
    cache_dir = Path(cache_dir).expanduser()
    identity = {"kind": source.kind, "source": source.config_dict(), "cache": dataclasses.asdict(config)}
    chash = _hash(identity)
    existing = read_cache_json(cache_dir) if cache_dir.is_dir() else None
    if existing is not None and existing.get("config_hash") != chash:
        old, new = _flat(existing.get("config", {})), _flat(identity)
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise InputError(f"{cache_dir} holds a cache made with other settings ({', '.join(diff[:6])}); use a new cache "
                         "folder, or delete this one to rebuild it.")
    _check_writable(cache_dir)
    samples_dir, text_dir = cache_dir / "samples", cache_dir / "text"
    for d in (samples_dir, text_dir):
        remove_stale_temporaries(d)
    storage = STORAGE_DTYPES[config.dtype]
    mine = list(range(rank, len(names), world))
    report = PrepareReport(rank=rank, world_size=world, total=len(mine))
    enc: CacheEncoders | None = encoders if isinstance(encoders, CacheEncoders) else None
    started = existing is not None

    def write_text(prompt: str) -> Path:
        p = text_dir / f"{text_key(prompt)}.safetensors"
        if _sample_meta(p) is None:
            from safetensors.torch import save_file

            emb = enc.encode_text(prompt, config.text_length).to(storage).contiguous()
            with atomic_path(p) as tmp:
                save_file({"text_embeds": emb}, str(tmp), metadata={"fourd_cache": json.dumps(
                    {"prompt": prompt, "tokens": int(emb.shape[0])})})
        return p

    empty_done = False

    def start():
        nonlocal enc, started, empty_done
        if enc is None:
            say("loading the encoders")
            enc = encoders()
        if not started:
            ensure_writable_dir(cache_dir, "Cache folder")
            doc = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "kind": source.kind, "config": identity,
                   "config_hash": chash, "encoders": enc.describe(), "empty_text": text_key(""),
                   "text_length": config.text_length}
            write_text_atomic(cache_dir / "cache.json", json.dumps(doc, indent=1))
            started = True
        if not empty_done:
            write_text("")  # the empty prompt (unconditional text, e.g. for CFG dropout)
            empty_done = True

    for n_done, i in enumerate(mine):
        name = names[i]
        path = samples_dir / f"{name}.safetensors"
        meta = _sample_meta(path)
        if meta and meta.get("config_hash") == chash and (text_dir / f"{meta.get('text_key')}.safetensors").is_file():
            report.skipped += 1
            continue
        try:
            clip = source.read(i)
        except (InputError, OSError, ValueError) as exc:
            msg = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
            report.bad.append({"name": name, "error": msg})
            say(f"bad sample ({len(report.bad)}): {msg}")
            continue
        start()
        prompt = clip.prompt
        gen = torch.Generator("cpu").manual_seed(seed_for(config.seed, name))
        tensors = (grid_tensors if source.kind == GRID else fourdnex_tensors)(clip, enc, config, gen)
        tensors = {k: (v.to(storage) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        tpath = write_text(prompt)
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "kind": source.kind, "name": name,
                "config_hash": chash, "prompt": prompt, "text_key": tpath.stem,
                "source": _jsonable(clip.source)}
        if isinstance(clip, GridClip):
            meta.update(views=clip.num_views, frames=clip.num_times, height=int(clip.frames.shape[2]),
                        width=int(clip.frames.shape[3]))
        else:
            meta.update(caption=clip.caption, frames=int(clip.rgb.shape[0]), height=int(clip.rgb.shape[1]),
                        width=int(clip.rgb.shape[2]), xyz_scale=float(clip.scale))
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"fourd_cache": json.dumps(meta)})
        report.written += 1
        say(f"{n_done + 1}/{len(mine)} {name}")

    report.global_ok = report.ok
    total_bad = len(report.bad)
    if state is not None and world > 1 and getattr(state, "use_distributed", False):
        from accelerate.utils import gather_object

        counts = gather_object([(report.ok, len(report.bad))])
        report.global_ok = sum(c[0] for c in counts)
        total_bad = sum(c[1] for c in counts)
    if report.global_ok == 0 and total_bad > 0:
        first = "; ".join(b["error"] for b in report.bad[:3])
        raise InputError(f"None of the samples could be read ({total_bad} bad" +
                         (f", {len(report.bad)} on this rank" if total_bad != len(report.bad) else "") +
                         f"): {first}. Fix the data (see the layout in fourd_core/training/data) and run prepare again.")
    if started:
        rep = {"rank": rank, "world_size": world, "total": report.total, "written": report.written,
               "skipped": report.skipped, "bad": report.bad}
        write_text_atomic(cache_dir / "reports" / f"prepare-rank{rank:05d}-of-{world:05d}.json", json.dumps(rep, indent=1))
    say(f"done: {report.written} written, {report.skipped} already there, {len(report.bad)} bad")
    return report


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        return json.loads(json.dumps(obj, default=str))
