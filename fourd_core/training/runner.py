"""The training loop on accelerate: one process or many (``accelerate launch`` / ``torchrun``; DDP, FSDP or
DeepSpeed from an accelerate config file, e.g. the shipped ``fourd_core/training/accelerate/*.yaml``).

accelerate does the distribution, mixed precision, gradient accumulation, checkpoint state and trackers;
``torch.optim.AdamW`` and diffusers' ``get_scheduler`` (linear warm-up, then constant, linear or cosine
decay) the optimisation. A run folder holds::

    checkpoints/step_XXXXXX/   trainable.safetensors (the trained tensors only, never the frozen base),
                               optimizer.safetensors, trainer_state.json (step, data position, schedule,
                               configuration); no pickle (FSDP / DeepSpeed: accelerate's sharded state);
                               written under a temporary name and renamed when complete; the newest
                               ``keep_checkpoints`` are kept
    logs/metrics.jsonl         step, loss, lr, validation loss (accelerate's tracker API; TensorBoard too
                               when chosen and installed)
    previews/step_XXXXXX.png   a short sample through the real inference pipeline (sync, lora)
    final/                     the weights in the formats the pack loads (:mod:`fourd_core.training.outputs`)

A run resumes from its newest checkpoint exactly (weights, optimiser, learning-rate schedule, RNG and the
position in the data); a checkpoint made with another configuration (objective, model, data, optimisation)
is refused with the differing keys. Ctrl-C / SIGTERM write a last checkpoint and stop cleanly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from ..interrupts import Terminated
from .config import TrainConfig

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
_KIND = {"sync": "grid", "fused": "grid", "lora": "fourdnex"}


# ----------------------------------------------------------------------------------------------
# data
def split_names(names: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """``(train, validation)``: the samples ordered by a seeded hash of their names, the first ``fraction``
    (at least one when there are two or more samples and ``fraction > 0``) held out.

    Raises:
        InputError: no sample left to train on.
    """
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())
    n_val = 0 if fraction <= 0 or len(names) < 2 else max(1, int(round(fraction * len(names))))
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    if not train:
        raise InputError(f"All {len(names)} cached samples are held out for validation; lower --validation-fraction "
                         "or cache more samples.")
    return train, val


def open_dataset(cfg: TrainConfig):
    """The cached dataset of the run, checked against the objective before any model loads.

    Raises:
        InputError: no cache, an empty one, or a cache of the other kind (grid vs 4DNeX).
    """
    from .data import open_latent_dataset

    ds = open_latent_dataset(cfg.cache)
    if ds.kind != _KIND[cfg.objective]:
        raise InputError(f"The cache {cfg.cache} holds {ds.kind!r} samples; the {cfg.objective} objective trains on "
                         f"{_KIND[cfg.objective]!r} samples (prepare the matching --layout).")
    made_with = ds.info.get("config", {}).get("cache", {}).get("model")
    if made_with and made_with != cfg.base:
        warnings.warn(f"The cache {cfg.cache} was made with the encoders of {made_with!r}; training {cfg.base!r} "
                      "(fine if both name the same model; the sizes are checked once it loads).")
    return ds


def check_cache_fits(dataset, transformer) -> None:
    """The cached embeddings have the sizes the loaded DiT reads (the cache was made with this model's encoders).

    Raises:
        InputError: text or image embedding widths differ (a cache of another model).
    """
    enc = dataset.info.get("encoders", {})
    for key, want in (("text_dim", transformer.config.text_dim), ("image_dim", transformer.config.image_dim)):
        have = enc.get(key)
        if have is not None and want is not None and int(have) != int(want):
            raise InputError(f"The cache {dataset.root} holds {key.replace('_dim', '')} embeddings of width {have}; "
                             f"the model {transformer.config.get('_name_or_path', '') or 'loaded'} reads {want}: the "
                             "cache was made with another model; run `train prepare` with this --base.")


def _batches(dataset, names, batch_size: int, seed: int, accelerator, start_micro: int):
    """Endless batches over ``names``, reshuffled every epoch (seed + epoch), sharded over the processes by
    accelerate, starting ``start_micro`` batches in (an exact resume)."""
    from torch.utils.data import DataLoader, Subset

    from .data import collate_latent_samples

    index = [dataset.names.index(n) for n in names]
    subset = Subset(dataset, index)
    epoch, skip = 0, start_micro
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        loader = accelerator.prepare_data_loader(DataLoader(subset, batch_size=batch_size, shuffle=True, generator=g,
                                                            collate_fn=collate_latent_samples), device_placement=False)
        if skip >= len(loader):
            skip -= len(loader)
            epoch += 1
            continue
        if skip:
            loader = accelerator.skip_first_batches(loader, skip)
            skip = 0
        yield from loader
        epoch += 1


# ----------------------------------------------------------------------------------------------
# checkpoints
def _checkpoints(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    return sorted(p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()) if root.is_dir() else []


def latest_checkpoint(out: str | Path) -> Path | None:
    """The newest complete checkpoint of a run folder (None: none)."""
    found = _checkpoints(Path(out))
    return found[-1] if found else None


def check_resume(cfg: TrainConfig, checkpoint: Path) -> dict:
    """The checkpoint's saved state; refused when its configuration differs.

    Raises:
        InputError: another objective, model, data or optimisation (the differing keys are named), or an
            unreadable checkpoint.
    """
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"Checkpoint {checkpoint} is unreadable ({exc}); delete it to start over.") from None
    diff = cfg.differences(state.get("config", {}))
    if diff:
        shown = ", ".join(f"{k}: {state['config'].get(k)!r} there, {cfg.to_json().get(k)!r} now" for k in diff[:6])
        raise InputError(f"The run folder {cfg.out} holds a checkpoint made with other settings ({shown}). Use the same "
                         "settings to resume, or another --out to start a new run.")
    return state


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser state dict as ``(tensors, json)``: ``state.<param>.<key>`` tensors for safetensors, the
    parameter groups and any non-tensor state entries as JSON (no pickle)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _save_checkpoint(accelerator, out: Path, step: int, cfg: TrainConfig, micro: int, model, optimizer,
                     scheduler) -> Path:
    """A checkpoint of the run at ``step``, written into a partial folder and renamed into place when complete.

    One process or DDP: ``trainable.safetensors`` (the trained tensors, never the frozen base),
    ``optimizer.safetensors`` (AdamW's moments) and ``trainer_state.json`` (step, data position, the
    optimiser's parameter groups, the learning-rate schedule's state, the configuration): no pickle. The run
    draws no global random numbers after its start (noise, noise levels and data order are functions of the
    seed, the step and the sample name), so these files are the whole state. FSDP / DeepSpeed: accelerate's
    ``save_state`` (the engines' own sharded formats) plus ``trainer_state.json``.
    """
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    final = root / f"step_{step:06d}"
    partial = root / f".partial-step_{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    state = {"step": step, "micro": micro, "config": cfg.to_json(), "scheduler": scheduler.state_dict(),
             "format": "accelerate" if _sharded(accelerator) else "fourd"}
    if _sharded(accelerator):
        accelerator.save_state(str(partial), safe_serialization=True)
    elif accelerator.is_main_process:
        trained = {k: v.detach().float().cpu().contiguous()
                   for k, v in accelerator.unwrap_model(model).trainable_state().items()}
        save_file(trained, str(partial / TRAINABLE_FILE))
        tensors, meta = _optimizer_tensors(optimizer)
        save_file(tensors, str(partial / OPTIMIZER_FILE))
        state["optimizer"] = meta
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _load_checkpoint(accelerator, checkpoint: Path, state: dict, model, optimizer, scheduler) -> None:
    """Restore what :func:`_save_checkpoint` wrote (every process reads the same files).

    Raises:
        InputError: a checkpoint written under another distribution (sharded vs not), with missing files or
            without the tensors this model trains.
    """
    from safetensors.torch import load_file

    if (state.get("format") == "accelerate") != _sharded(accelerator):
        raise InputError(f"Checkpoint {checkpoint.name} was written under "
                         f"{'FSDP / DeepSpeed' if state.get('format') == 'accelerate' else 'one process or DDP'}; "
                         "resume it with the same accelerate configuration.")
    if _sharded(accelerator):
        accelerator.load_state(str(checkpoint))
    else:
        try:
            trained = load_file(str(checkpoint / TRAINABLE_FILE))
            tensors = load_file(str(checkpoint / OPTIMIZER_FILE))
        except (OSError, ValueError) as exc:
            raise InputError(f"Checkpoint {checkpoint} is incomplete ({exc}); delete it to resume from the one "
                             "before.") from None
        params = dict(accelerator.unwrap_model(model).named_parameters())
        wanted = {k for k, p in params.items() if p.requires_grad}
        if set(trained) != wanted:
            odd = sorted(wanted ^ set(trained))
            raise InputError(f"Checkpoint {checkpoint.name} does not hold this model's trained tensors (e.g. {odd[0]}): "
                             "it belongs to another model or mode; use another --out.")
        with torch.no_grad():
            for k, v in trained.items():
                params[k].copy_(v.to(params[k].dtype))
        optimizer.load_state_dict(_optimizer_state(tensors, state["optimizer"]))
    scheduler.load_state_dict(state["scheduler"])


# ----------------------------------------------------------------------------------------------
# trackers
def _trackers(cfg: TrainConfig, out: Path):
    from accelerate.tracking import GeneralTracker, on_main_process

    class JsonlTracker(GeneralTracker):
        """One JSON line per logged step in ``logs/metrics.jsonl`` (accelerate's custom-tracker API)."""

        name = "fourd_jsonl"
        requires_logging_directory = False

        @on_main_process
        def __init__(self, path: Path):
            super().__init__()
            self.path = path
            path.parent.mkdir(parents=True, exist_ok=True)

        @property
        def tracker(self):
            return self.path

        @on_main_process
        def store_init_configuration(self, values: dict):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"config": values}, default=str) + "\n")

        @on_main_process
        def log(self, values: dict, step: int | None = None, **kwargs):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}, default=float) + "\n")

    trackers: list = [JsonlTracker(out / "logs" / "metrics.jsonl")]
    if cfg.tracker == "tensorboard":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise InputError("--tracker tensorboard needs the tensorboard package (pip install tensorboard); the JSONL "
                             "log is always written.") from None
        trackers.append("tensorboard")
    return trackers


# ----------------------------------------------------------------------------------------------
# model
def build(cfg: TrainConfig, device):
    """``(pipe, objective)``: the base pipeline on ``device`` and the objective module around its transformer.

    Raises:
        WeightsError / InputError: the base model or the release to continue from cannot be read.
    """
    from ..models.loading import ModelSpec
    from ..models.memory import MemoryConfig
    from ..pipelines.assemble import load_pipeline
    from .objectives import OBJECTIVES

    pipe, _ = load_pipeline(ModelSpec(base=cfg.base, fourdnex=None, dtype=cfg.dtype),
                            MemoryConfig(device=str(device), offload="none"))
    release = None
    if cfg.objective == "lora" and cfg.init_release:
        from ..models.lora import find_release_files, read_domain_embeddings, read_fourdnex_lora

        lora_file, emb_file = find_release_files(cfg.init_release)
        if emb_file is None:
            raise InputError(f"The release {cfg.init_release} has no learnable_domain_embeddings beside its LoRA.")
        release = (read_fourdnex_lora(lora_file, pipe.transformer), read_domain_embeddings(emb_file))
    kwargs = {"release": release} if cfg.objective == "lora" else {}
    objective = OBJECTIVES[cfg.objective](pipe.transformer, cfg, **kwargs).to(device)
    return pipe, objective


@torch.no_grad()
def validation_loss(objective, dataset, names: list[str], collate, device) -> float | None:
    """Mean loss over the held-out samples with fixed noise (step -1: the same draw at every validation)."""
    if not names:
        return None
    losses = []
    for n in names:
        batch = collate([dataset[dataset.names.index(n)]])
        losses.append(float(objective(_to(batch, device), step=-1)))
    return sum(losses) / len(losses)


def _to(batch, device):
    return dataclasses.replace(batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)
                                         if isinstance(getattr(batch, f.name), torch.Tensor)})


@torch.no_grad()
def write_preview(pipe, objective, sample, cfg: TrainConfig, path: Path) -> Path | None:
    """A short sample through the real inference pipeline, saved as a PNG: the grid sampler with the current
    sync layers (rows = views, columns = times), or the 4DNeX sampler with the current LoRA (RGB | XYZ, frame 0)."""
    from PIL import Image

    from ..util.atomic import atomic_path

    if cfg.preview_steps < 1 or cfg.objective == "fused":
        return None
    if cfg.objective == "sync":
        from ..pipelines.grid import GridConfig, decode_rows, generate_grid

        rows = decode_rows(pipe, sample.latents[None][0].to(pipe._execution_device))   # [V, F, H, W, 3]
        v, f = rows.shape[:2]
        grid = generate_grid(pipe, rows[0], rows[:, 0], sample.prompt, GridConfig(
            mode=cfg.sync_mode, window_views=v, window_frames=f, overlap_views=1, overlap_frames=1,
            steps=cfg.preview_steps, guidance_scale=1.0, seed=cfg.seed), sync=objective.sync).frames
        cols = sorted({round(t * (f - 1) / 3) for t in range(4)})
        image = torch.cat([torch.cat([grid[i, t] for t in cols], dim=1) for i in range(v)], dim=0)
    else:
        from ..pipelines.fourdnex import PROMPT_SUFFIX, SamplingConfig, decode_6d, generate_latents

        h, w = sample.image.shape[:2]
        frames = 4 * (sample.target.shape[1] - 1) + 1
        latents = generate_latents(pipe, sample.image, sample.prompt.removesuffix(PROMPT_SUFFIX), SamplingConfig(
            num_frames=frames, height=h, width=w, steps=cfg.preview_steps, guidance_scale=1.0, seed=cfg.seed))
        rgb, xyz = decode_6d(pipe, latents)
        image = torch.cat([rgb[0], xyz[0].clamp(0, 1)], dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray((image.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype("uint8")).save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------------------------
# the run
class _Stop:
    """SIGINT / SIGTERM during training: remembered, acted on after the current step (a last checkpoint)."""

    def __init__(self):
        self.kind = None
        self.previous = {}

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.kind = KeyboardInterrupt if signum == signal.SIGINT else Terminated

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def train(cfg: TrainConfig, log=None, stop_after: int | None = None) -> dict:
    """Run (or resume) the training ``cfg`` describes; returns a summary (steps, losses, output files, timings).

    ``stop_after``: stop as Ctrl-C would after this step (a last checkpoint, no final weights) and return the
    summary with ``"stopped": True`` - for time-boxed jobs and the resume tests.

    Everything checkable is checked before any model loads: the settings, the cache (its kind and samples),
    a resumed checkpoint's configuration.

    Raises:
        InputError: bad settings, cache or checkpoint (the message names the fix).
        KeyboardInterrupt / Terminated: stopped by Ctrl-C / SIGTERM, after a last checkpoint.
    """
    from accelerate import Accelerator, PartialState
    from diffusers.optimization import get_scheduler
    from tqdm import tqdm

    from .data import collate_latent_samples
    from .outputs import write_outputs

    cfg.check()
    out = Path(cfg.out).expanduser()
    dataset = open_dataset(cfg)
    train_names, val_names = split_names(dataset.names, cfg.validation_fraction, cfg.seed)
    checkpoint = latest_checkpoint(out)
    resumed = check_resume(cfg, checkpoint) if checkpoint is not None else None
    cpu = not torch.cuda.is_available()
    PartialState(cpu=cpu)     # first, so that a torchrun / accelerate launch on CPUs is one gloo group (not N runs)
    accelerator = Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.grad_accum, log_with=_trackers(cfg, out),
                              project_dir=str(out))
    say = log or (lambda m: print(f"[fourd train] {m}", file=sys.stderr) if accelerator.is_main_process else None)
    say(f"{cfg.objective}: {len(train_names)} training / {len(val_names)} validation samples, {cfg.steps} steps on "
        f"{accelerator.num_processes} process(es) ({accelerator.device})")
    t0 = time.perf_counter()
    pipe, objective = build(cfg, accelerator.device)
    check_cache_fits(dataset, pipe.transformer)
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    schedule = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.schedule]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)
    # the schedule is stepped once per optimiser step here (accelerate's wrapper would step it once per process)
    model, optimizer = accelerator.prepare(objective, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    step = micro = 0
    if resumed is not None:
        _load_checkpoint(accelerator, checkpoint, resumed, model, optimizer, scheduler)
        step, micro = int(resumed["step"]), int(resumed["micro"])
        say(f"resumed from {checkpoint.name} (step {step})")
    accelerator.init_trackers("fourd", config=cfg.to_json())
    batches = _batches(dataset, train_names, cfg.batch_size, cfg.seed, accelerator, micro)
    bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.objective}", unit="step", file=sys.stderr,
               disable=not accelerator.is_main_process)
    history, last_val, stopped = [], None, None
    load_s = time.perf_counter() - t0
    t_train = time.perf_counter()
    start_step = step
    with _Stop() as stop:
        while step < cfg.steps:
            model.train()
            for _ in range(cfg.grad_accum):
                batch = _to(next(batches), accelerator.device)
                with accelerator.accumulate(model):
                    loss = model(batch, step=micro)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                micro += 1
            scheduler.step()
            step += 1
            value = float(accelerator.gather(loss.detach()[None]).mean())
            history.append(value)
            bar.update(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                accelerator.log({"loss": value, "lr": scheduler.get_last_lr()[0]}, step=step)
            if cfg.validate_every and step % cfg.validate_every == 0 and step < cfg.steps:
                last_val = _validate(accelerator, model, pipe, dataset, val_names, cfg, out, step, collate_latent_samples)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save_checkpoint(accelerator, out, step, cfg, micro, model, optimizer, scheduler)
            if stop_after is not None and step >= stop_after and step < cfg.steps:
                stop.kind = "asked"
            if stop.kind is not None:
                stopped = stop.kind
                if step % cfg.checkpoint_every and step != cfg.steps:
                    _save_checkpoint(accelerator, out, step, cfg, micro, model, optimizer, scheduler)
                break
    bar.close()
    train_s = time.perf_counter() - t_train
    if stopped is not None:
        accelerator.end_training()
        say(f"stopped at step {step}: checkpoint written; run the same command to resume")
        if stopped == "asked":
            return {"objective": cfg.objective, "steps": step, "stopped": True, "losses": history}
        raise stopped()
    last_val = _validate(accelerator, model, pipe, dataset, val_names, cfg, out, step, collate_latent_samples)
    files = []
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        trained = set(accelerator.unwrap_model(model).trainable_state())
        files = write_outputs(accelerator.unwrap_model(model), {k: v for k, v in state.items()
                                                               if k.removeprefix("module.") in trained}, out / "final", cfg)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    done = step - start_step
    return {"objective": cfg.objective, "steps": step, "stopped": False, "losses": history,
            "first_loss": history[0] if history else None,
            "last_loss": history[-1] if history else None, "validation_loss": last_val,
            "files": [str(f) for f in files], "load_s": round(load_s, 2), "train_s": round(train_s, 2),
            "steps_per_s": round(done / train_s, 4) if done and train_s > 0 else None,
            "processes": accelerator.num_processes}


def _validate(accelerator, model, pipe, dataset, names, cfg, out, step, collate) -> float | None:
    model.eval()
    objective = accelerator.unwrap_model(model)
    value = validation_loss(objective, dataset, names, collate, accelerator.device)
    if accelerator.is_main_process:
        if value is not None:
            accelerator.log({"validation_loss": value}, step=step)
        if names:
            sample = dataset[dataset.names.index(names[0])]
            write_preview(pipe, objective, sample, cfg, out / "previews" / f"step_{step:06d}.png")
    accelerator.wait_for_everyone()
    return value


def steps_for(cfg: TrainConfig) -> int:
    """Optimiser steps of one epoch over the training samples on one process (for planning runs)."""
    return math.ceil(len(split_names(open_dataset(cfg).names, cfg.validation_fraction, cfg.seed)[0]) / cfg.batch_size)
