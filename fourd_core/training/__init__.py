"""Training the models the papers trained, on accelerate (one CPU to many GPUs):

* ``sync``: 4Real-Video's synchronisation layers (Sec. 3.2.4, Eqs. 8-10) on a frozen Wan DiT;
* ``fused``: a LoRA on the DiT under 4Real-Video-V2's sparse view-time attention;
* ``lora``: 4DNeX's rank-64 LoRA and domain embeddings (4DNeX Sec. 4).

Data: :mod:`fourd_core.training.data` (readers, the latent cache, datasets). Objectives:
:mod:`.objectives`; the loop, checkpoints and validation: :mod:`.runner`; the files the pack's loaders
read: :mod:`.outputs`; settings: :mod:`.config`. Shipped accelerate configurations (DDP, FSDP, DeepSpeed
ZeRO-2 / ZeRO-3): ``fourd_core/training/accelerate/``.
"""
