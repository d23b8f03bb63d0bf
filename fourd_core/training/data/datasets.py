"""``torch.utils.data.Dataset`` classes over the latent cache (:mod:`.cache`), one typed sample each.

* :class:`GridLatentDataset` -> :class:`GridLatentSample` (``sync`` / ``fused`` objectives);
* :class:`FourDNeXLatentDataset` -> :class:`FourDNeXLatentSample` (``lora`` objective);
* :func:`open_latent_dataset` picks by the cache's kind; :func:`collate_latent_samples` stacks
  samples into a batch of the same dataclass (every tensor gains a leading batch axis ``B``).

A sample that cannot be read raises :class:`~fourd_core.errors.InputError` naming it: there is no
silent substitution of another sample (the official 4DNeX dataset's bare ``except`` did that and
could loop forever). All tensors come back float32 (masks float32 in {0, 1}, ``known`` bool), on
the CPU; text embeddings are zero-padded to ``text_length`` (512), as diffusers' ``encode_prompt``
returns them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from ...errors import InputError, brief
from .cache import read_cache_json
from .clips import FOURDNEX, GRID


@dataclasses.dataclass
class GridLatentSample:
    """One grid from the cache (``T`` latent frames; ``h, w`` latent size = pixels / 8).

    Attributes:
        name: the sample name (a list of names in a batch).
        latents: ``[V, 16, T, h, w]`` clean row latents (VAE-normalised): the targets; row 0 and
            the known column are given to the model as well.
        condition: ``[V, 16, T, h, w]`` the I2V condition latents of the known pixels (row 0 and
            column 0; mid-gray elsewhere), as :func:`fourd_core.pipelines.grid.sample_window`
            builds them.
        mask: ``[V, 4, T, h, w]`` float32 {0, 1}: the I2V mask channels of the known pixels.
        known: ``[V, T]`` bool: latent frames fully given by known pixels (the sampler replaces
            them by their clean latents; train the loss on ``~known``).
        valid: ``[V, T, h, w]`` float32 {0, 1}: loss mask (0 where a pseudo-grid warp brought in
            pixels from outside the frame).
        clip_rows: ``[V, N_img, D_img]`` CLIP of each row's first frame (None without CLIP).
        clip_cols: ``[T, N_img, D_img]`` CLIP of the fixed-view frame at pixel frame ``4 tau``.
        text_embeds: ``[text_length, D_text]`` zero-padded UMT5 embedding of ``prompt``.
        text_tokens: tokens before the padding (an int; a ``[B]`` long tensor in a batch).
        prompt: the caption (no suffix: the grid runs the base model).
    """

    name: str | list
    latents: torch.Tensor
    condition: torch.Tensor
    mask: torch.Tensor
    known: torch.Tensor
    valid: torch.Tensor
    clip_rows: torch.Tensor | None
    clip_cols: torch.Tensor | None
    text_embeds: torch.Tensor
    text_tokens: int | torch.Tensor
    prompt: str | list


@dataclasses.dataclass
class FourDNeXLatentSample:
    """One 4DNeX sample from the cache (``T`` latent frames, ``h, w`` latent size of one modality).

    Attributes:
        name: the sample name (a list in a batch).
        target: ``[16, T, h, 2w]`` the width-fused clean latents ``[RGB | (XYZ + 0.13) / 1.70]``
            (VAE-normalised; XYZ half modality-normalised, 4DNeX Sec. 4.2).
        condition: ``[16, T, h, 2w]`` VAE-normalised condition latents of ``[RGB_0 | plane]``
            followed by gray frames.
        mask: ``[4, T, h, 2w]`` the 4DNeX I2V mask (1 on the RGB half of latent frame 0, 0.5 on its
            XYZ half, 0 elsewhere; :func:`fourd_core.pipelines.conditioning.condition_mask`).
        clip: ``[N_img, D_img]`` CLIP of the first RGB frame (None without CLIP).
        text_embeds: ``[text_length, D_text]`` zero-padded UMT5 embedding of ``prompt``.
        text_tokens: tokens before the padding.
        image: ``[H, W, 3]`` float32 in [0, 1], the condition image (for validation previews).
        prompt: caption + ``" POINTMAP_STYLE."``.
    """

    name: str | list
    target: torch.Tensor
    condition: torch.Tensor
    mask: torch.Tensor
    clip: torch.Tensor | None
    text_embeds: torch.Tensor
    text_tokens: int | torch.Tensor
    image: torch.Tensor
    prompt: str | list


class _LatentDataset(Dataset):
    kind = ""

    def __init__(self, cache_dir: str | Path, names: Sequence[str] | None = None, text_length: int | None = None):
        self.root = Path(cache_dir).expanduser()
        doc = read_cache_json(self.root)
        if doc is None:
            raise InputError(f"No latent cache in {self.root} (cache.json missing); run prepare first.")
        if doc.get("kind") != self.kind:
            raise InputError(f"{self.root} is a {doc.get('kind')!r} cache; this dataset reads {self.kind!r} caches "
                             f"(use open_latent_dataset, or the other objective).")
        self.info = doc
        self.text_length = int(text_length or doc.get("text_length", 512))
        found = sorted(p.stem for p in (self.root / "samples").glob("*.safetensors") if not p.name.startswith("."))
        if names is None:
            self.names = found
        else:
            missing = sorted(set(names) - set(found))
            if missing:
                raise InputError(f"{len(missing)} requested samples are not in the cache {self.root} "
                                 f"(e.g. {missing[:3]}); run prepare for them.")
            self.names = list(names)
        if not self.names:
            raise InputError(f"The latent cache {self.root} holds no samples; run prepare (its report lists bad ones).")
        self._text: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.names)

    def _load(self, index: int) -> tuple[dict, dict]:
        from safetensors import safe_open

        name = self.names[index]
        path = self.root / "samples" / f"{name}.safetensors"
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("fourd_cache", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise InputError(f"Cached sample {name} cannot be read ({brief(exc)}); run prepare again (it recomputes "
                             "damaged samples) or drop it.") from exc
        if meta.get("config_hash") != self.info.get("config_hash"):
            raise InputError(f"Cached sample {name} was made with other settings than {self.root / 'cache.json'}; "
                             "run prepare again.")
        return meta, tensors

    def text(self, key: str) -> tuple[torch.Tensor, int]:
        """``(embeds [text_length, D] float32 zero-padded, tokens)`` of a text file of the cache.

        Raises:
            InputError: a missing or damaged text file.
        """
        if key not in self._text:
            from safetensors.torch import load_file

            path = self.root / "text" / f"{key}.safetensors"
            try:
                self._text[key] = load_file(str(path))["text_embeds"].float()
            except Exception as exc:
                raise InputError(f"Text embedding {path.name} of the cache {self.root} cannot be read "
                                 f"({brief(exc)}); run prepare again.") from exc
            if len(self._text) > 4096:
                self._text.pop(next(iter(self._text)))
        emb = self._text[key]
        n = min(int(emb.shape[0]), self.text_length)
        out = emb.new_zeros(self.text_length, emb.shape[1])
        out[:n] = emb[:n]
        return out, n

    def empty_text(self) -> tuple[torch.Tensor, int]:
        """The embedding of the empty prompt (unconditional text), as :meth:`text`."""
        return self.text(self.info["empty_text"])


class GridLatentDataset(_LatentDataset):
    """The samples of a ``"grid"`` cache (:class:`GridLatentSample`).

    Args:
        cache_dir: the cache folder. names: a subset in this order (e.g. a held-out split);
            default every sample, sorted by name. text_length: pad text to this (default the cache's).
    Raises:
        InputError: no cache, a cache of another kind, an empty cache, names not in it.
    """

    kind = GRID

    def __getitem__(self, index: int) -> GridLatentSample:
        meta, t = self._load(index)
        text, n = self.text(meta["text_key"])
        return GridLatentSample(
            name=self.names[index], latents=t["latents"].float(), condition=t["condition"].float(),
            mask=t["mask"].float(), known=t["known"].bool(), valid=t["valid"].float(),
            clip_rows=t["clip_rows"].float() if "clip_rows" in t else None,
            clip_cols=t["clip_cols"].float() if "clip_cols" in t else None,
            text_embeds=text, text_tokens=n, prompt=meta.get("prompt", ""))


class FourDNeXLatentDataset(_LatentDataset):
    """The samples of a ``"fourdnex"`` cache (:class:`FourDNeXLatentSample`).

    The XYZ latents get the modality normalisation here (:func:`fourd_core.pipelines.xyz_init.normalize_xyz_latents`),
    as the official ``WanI2VDatasetWithResize`` does, and are fused with the RGB latents along the width.

    Raises:
        InputError: no cache, a cache of another kind, an empty cache, names not in it.
    """

    kind = FOURDNEX

    def __getitem__(self, index: int) -> FourDNeXLatentSample:
        from ...pipelines.xyz_init import normalize_xyz_latents
        from ...pipelines.conditioning import condition_mask, fuse_width

        meta, t = self._load(index)
        text, n = self.text(meta["text_key"])
        target = fuse_width(t["rgb_latents"].float(), normalize_xyz_latents(t["xyz_latents"].float()))
        c, tl, h, w2 = target.shape
        mask = condition_mask(1, (tl - 1) * 4 + 1, h, w2)[0]
        return FourDNeXLatentSample(
            name=self.names[index], target=target, condition=t["condition"].float(), mask=mask,
            clip=t["clip"].float() if "clip" in t else None, text_embeds=text, text_tokens=n,
            image=t["image"].float() / 255.0, prompt=meta.get("prompt", ""))


def open_latent_dataset(cache_dir: str | Path, names: Sequence[str] | None = None):
    """The dataset class matching the cache's kind (:class:`GridLatentDataset` or :class:`FourDNeXLatentDataset`).

    Raises:
        InputError: no cache in ``cache_dir`` (or an unknown kind).
    """
    doc = read_cache_json(Path(cache_dir).expanduser())
    if doc is None:
        raise InputError(f"No latent cache in {cache_dir} (cache.json missing); run prepare first.")
    cls = {GRID: GridLatentDataset, FOURDNEX: FourDNeXLatentDataset}.get(doc.get("kind"))
    if cls is None:
        raise InputError(f"{cache_dir} has an unknown cache kind {doc.get('kind')!r}.")
    return cls(cache_dir, names)


def collate_latent_samples(samples: list):
    """Stack samples of one dataclass into a batch (``collate_fn`` for ``torch.utils.data.DataLoader``).

    Tensors are stacked along a new axis 0; ``name`` and ``prompt`` become lists; ``text_tokens``
    a ``[B]`` long tensor; optional tensors stay None when any sample lacks them.

    Raises:
        InputError: an empty list, mixed sample types, or tensors of different shapes (a batch needs
            one grid / video size; use batch size 1 or bucket by size).
    """
    if not samples:
        raise InputError("Cannot collate an empty batch.")
    cls = type(samples[0])
    if any(type(s) is not cls for s in samples):
        raise InputError("A batch mixes grid and 4DNeX samples.")
    out = {}
    for f in dataclasses.fields(cls):
        vals = [getattr(s, f.name) for s in samples]
        if f.name in ("name", "prompt"):
            out[f.name] = list(vals)
        elif f.name == "text_tokens":
            out[f.name] = torch.tensor(vals, dtype=torch.long)
        elif any(v is None for v in vals):
            out[f.name] = None
        else:
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise InputError(f"Samples of one batch have different {f.name} shapes {sorted(shapes)[:3]}; use "
                                 "batch size 1 or samples of one size.")
            out[f.name] = torch.stack(vals)
    return cls(**out)
