"""Many images -> many scenes, on one process or under ``torchrun`` (one scene per image).

Layout under ``--out``::

    OUT/<image name>/...              the usual scene files (fourd_core.io.export), plus
    OUT/<image name>/fourd_done.json  written last: what was made from what (the completion marker)
    OUT/batch_summary.json            the last run's summary (done, skipped, failed, times)

A scene folder is built as a hidden temporary folder and renamed into place only when complete
(:func:`fourd_core.util.atomic.atomic_directory`; the export inside is atomic as well), and its
marker is the last file written before that rename. A scene counts as *finished* when its marker
reads back, names the same job (hash of the image bytes, the prompt, the seed and every setting
that changes the output) and every file it lists exists. A rerun skips finished scenes, redoes
unfinished or changed ones (``--redo``: all), and removes leftovers of killed runs.

Work split: rank 0 decides what is to do and broadcasts the list; scene group ``g`` of ``G``
(see :class:`~fourd_core.distributed.runtime.DistContext`) takes items ``g, g + G, ...``. Every
rank loads the models once. A failing image is reported and the rank moves on; at the end the
ranks exchange their reports (``all_gather_object``) and rank 0 prints and writes the summary.
Exit code 0 when nothing failed, 2 otherwise (under torchrun: rank 0's, after every rank is done).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
from pathlib import Path

from ..errors import InputError
from ..util.text import read_text_file
from ..util.atomic import atomic_directory, remove_stale_temporaries, write_text_atomic
from .runtime import DistContext, enable_scene_parallel, sequence_length

#: image file suffixes the batch mode picks up (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
DONE_MARKER = "fourd_done.json"
SUMMARY_FILE = "batch_summary.json"


@dataclasses.dataclass
class BatchItem:
    """One scene of a batch: ``name`` (output sub-folder), ``image`` (path), ``prompt``, ``seed`` (None: ``--seed``)."""

    name: str
    image: str
    prompt: str
    seed: int | None = None


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (suffixes :data:`IMAGE_SUFFIXES`, hidden files skipped), sorted.

    Raises:
        InputError: not a folder, or no image in it.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder; give the folder that holds the images.")
    images = sorted(p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir())
    if not images:
        raise InputError(f"No images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)}).")
    return images


def read_prompts_jsonl(path: str | Path, encoding: str | None = None) -> dict[str, dict]:
    """``--prompts`` file: one JSON object per line with ``image`` (file name, or its stem) and
    ``prompt``, optionally ``seed`` (int). Blank lines are skipped. Returns ``{image: entry}``.

    Args:
        encoding: the file's text encoding (None: UTF-8; :func:`fourd_core.util.text.read_text_file`).
    Raises:
        InputError: missing file, text not in the encoding (with the byte offset), a line that is not
            such an object (with its line number), duplicates.
    """
    path = Path(path).expanduser()
    entries: dict[str, dict] = {}
    for n, line in enumerate(read_text_file(path, "--prompts file", encoding).splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n} is not JSON ({exc.msg}); write one "
                             '{"image": "name.png", "prompt": "..."} per line.') from exc
        if (not isinstance(entry, dict) or not isinstance(entry.get("image"), str)
                or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip()
                or not isinstance(entry.get("seed", 0), int)):
            raise InputError(f"{path} line {n}: need a string 'image', a non-empty string 'prompt' and "
                             "optionally an integer 'seed'.")
        if entry["image"] in entries:
            raise InputError(f"{path} line {n}: {entry['image']!r} is listed twice.")
        entries[entry["image"]] = entry
    return entries


def plan_items(images_dir: str | Path, prompts_file: str | Path | None = None,
               default_prompt: str | None = None, encoding: str | None = None) -> list[BatchItem]:
    """The batch: every image of ``images_dir`` with its prompt, from (first found) the ``--prompts``
    entry, ``<image stem>.txt`` beside the image, or ``default_prompt``. ``encoding``: of the
    ``--prompts`` file and the ``.txt`` sidecars (None: UTF-8).

    Raises:
        InputError: images without a prompt, two images with one output name (``a.png``, ``a.jpg``),
            ``--prompts`` entries naming no image in the folder (all listed; before any work).
    """
    images = list_images(images_dir)
    entries = read_prompts_jsonl(prompts_file, encoding) if prompts_file else {}
    by_stem: dict[str, Path] = {}
    for p in images:
        if p.stem in by_stem:
            raise InputError(f"{by_stem[p.stem].name} and {p.name} would both write {p.stem}/; rename one.")
        by_stem[p.stem] = p
    known = {p.name for p in images} | set(by_stem)
    unknown = sorted(k for k in entries if k not in known)
    if unknown:
        raise InputError(f"--prompts names images that are not in {images_dir}: {', '.join(unknown)}.")
    items, missing = [], []
    for p in images:
        entry = entries.get(p.name) or entries.get(p.stem)
        side = p.with_suffix(".txt")
        if entry:
            prompt, seed = entry["prompt"].strip(), entry.get("seed")
        elif side.is_file():
            prompt, seed = read_text_file(side, "Prompt file", encoding).strip(), None
        else:
            prompt, seed = (default_prompt or "").strip(), None
        if not prompt:
            missing.append(p.name)
        items.append(BatchItem(name=p.stem, image=str(p), prompt=prompt, seed=seed))
    if missing:
        raise InputError(f"No prompt for {', '.join(missing)}: add them to --prompts, put <name>.txt beside "
                         "each image, or give --prompt for all.")
    return items


def job_fingerprint(item: BatchItem, settings: dict) -> str:
    """sha256 over the image bytes, prompt, seed and ``settings`` (what changes the output).
    An unreadable image hashes as such (it will fail, and be retried, on every run)."""
    h = hashlib.sha256()
    try:
        h.update(Path(item.image).read_bytes())
    except OSError as exc:
        h.update(f"unreadable:{exc}".encode())
    h.update(json.dumps({"prompt": item.prompt, "seed": item.seed, "settings": settings}, sort_keys=True,
                        default=str).encode())
    return h.hexdigest()


def scene_status(folder: Path, fingerprint: str) -> str:
    """``"finished"`` (marker matches and every listed file exists), ``"new"`` (no folder),
    ``"unfinished"`` (folder without a valid marker or with missing files) or ``"changed"``
    (finished for another image/prompt/setting)."""
    if not folder.is_dir():
        return "new"
    try:
        marker = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "unfinished"
    if not all((folder / f).is_file() for f in files):
        return "unfinished"
    return "finished" if marker.get("fingerprint") == fingerprint else "changed"


def _relative_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def run_batch(job, items: list[BatchItem], out: Path, ctx: DistContext, settings: dict, *, redo: bool = False) -> dict:
    """Make every unfinished scene of ``items`` under ``out``; returns this run's summary (on every rank).

    Args:
        job: a :class:`~fourd_core.job.SceneJob` (``prepare``, ``load``, ``make``).
        settings: the settings that change the output (part of each scene's fingerprint).
    """
    t0 = time.perf_counter()
    plan = None
    if ctx.is_main:
        remove_stale_temporaries(out)
        plan = []
        for item in items:
            fp = job_fingerprint(item, settings)
            status = scene_status(out / item.name, fp)
            plan.append((dataclasses.asdict(item), fp, "redo" if redo and status == "finished" else status))
    plan = ctx.broadcast_object(plan)
    todo = [(BatchItem(**it), fp, st) for it, fp, st in plan if st != "finished"]
    skipped = [it["name"] for it, _, st in plan if st == "finished"]
    mine = todo[ctx.group::ctx.groups]
    if ctx.is_main:
        ctx.log(f"{len(items)} images: {len(skipped)} finished (skipped), {len(todo)} to do over {ctx.groups} "
                f"scene group(s) of {ctx.spec.size} rank(s)")
    report = {"rank": ctx.rank, "writer": ctx.is_writer, "done": [], "failed": [], "seconds": {}}
    if todo:  # every rank loads (mesh sub-groups are collective), even one without items
        pipe, info = job.load(str(ctx.device), log=ctx.log)
        if ctx.spec.size > 1:
            tokens = None if job.config.resize == "max_area" else sequence_length(
                pipe.transformer, job.sampling.num_frames, job.sampling.height, job.sampling.width)
            enable_scene_parallel(pipe.transformer, ctx, tokens)
        t_loaded = time.perf_counter()
        report["load_s"] = round(t_loaded - t0, 2)
        for n, (item, fp, status) in enumerate(mine, 1):
            t_item = time.perf_counter()
            ctx.log(f"[{n}/{len(mine)}] {item.name} ({status})")
            try:
                prepared = job.prepare(item.image, seed=item.seed)
                if ctx.is_writer:
                    with atomic_directory(out / item.name) as tmp:
                        summary = job.make(pipe, info, prepared, item.prompt, tmp, log=ctx.log)
                        marker = {"fingerprint": fp, "image": str(Path(item.image).resolve()), "prompt": item.prompt,
                                  "seed": prepared[1].seed, "settings": settings, "summary": summary,
                                  "rank": ctx.rank, "pid": os.getpid(), "host": socket.gethostname(),
                                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "files": _relative_files(tmp)}
                        write_text_atomic(tmp / DONE_MARKER, json.dumps(marker, indent=1, default=str))
                else:
                    job.make(pipe, info, prepared, item.prompt, None, write=False, log=ctx.log)
            except Exception as exc:  # noqa: BLE001 - one bad image must not stop the batch; interrupts propagate
                ctx.log(f"FAILED {item.name}: {type(exc).__name__}: {exc}")
                report["failed"].append({"image": item.image, "name": item.name, "error": f"{type(exc).__name__}: {exc}"})
                _free_memory()
                continue
            report["done"].append(item.name)
            report["seconds"][item.name] = round(time.perf_counter() - t_item, 2)
    reports = ctx.all_gather_object(report)
    writers = [r for r in reports if r["writer"]]
    summary = {"images": len(items), "done": sorted(n for r in writers for n in r["done"]), "skipped": sorted(skipped),
               "failed": [f for r in writers for f in r["failed"]], "ranks": ctx.world_size,
               "parallel": str(ctx.spec), "total_s": round(time.perf_counter() - t0, 2),
               "load_s": max((r.get("load_s", 0.0) for r in reports), default=0.0),
               "per_rank": [{"rank": r["rank"], "done": r["done"], "failed": [f["name"] for f in r["failed"]],
                             "seconds": r["seconds"]} for r in reports]}
    if ctx.is_main:
        write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1))
    return summary


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_scene_parallel(job, image: str, out: str, prompt: str, ctx: DistContext) -> dict:
    """One scene over ``ctx.spec.size`` ranks: every rank samples its share, rank 0 decodes and writes ``out``."""
    prepared = job.prepare(image)  # fail before the models load
    t0 = time.perf_counter()
    pipe, info = job.load(str(ctx.device), log=ctx.log)
    _, sampling = prepared
    tokens = sequence_length(pipe.transformer, sampling.num_frames, sampling.height, sampling.width)
    enable_scene_parallel(pipe.transformer, ctx, tokens)
    t_loaded = time.perf_counter()
    summary = job.make(pipe, info, prepared, prompt, out if ctx.is_main else None, write=ctx.is_main, log=ctx.log)
    return {"out": str(Path(out).resolve()), "parallel": str(ctx.spec), "ranks": ctx.world_size,
            "tiny_preset": job.tiny, **summary, "load_s": round(t_loaded - t0, 2),
            "total_s": round(time.perf_counter() - t0, 2)}
