"""Training data for the sync, fused and lora objectives (readers, the latent cache, datasets).

See the module docstrings for the folder layouts:

* :mod:`.pseudo_grid` - pseudo-4D grids from ordinary videos (4Real-Video Sec. 3.3 (1));
* :mod:`.multiview` - multi-view video folders and the grids this pack writes (Sec. 3.3 (2));
* :mod:`.fourdnex10m` - the 4DNeX-10M annotations (MonST3R, dynamic_3, static, captions);
* :mod:`.rgbd` - plain RGB-D video and ``scene.safetensors`` files;
* :mod:`.pointmaps` - the 4DNeX XYZ recipe;
* :mod:`.cache` - ``prepare``: VAE latents, text and CLIP embeddings as ``.safetensors``;
* :mod:`.datasets` - the ``torch.utils.data.Dataset`` classes that read the cache.

``fourd_core/training/`` is a namespace package here (no ``__init__.py``), so this folder does not
collide with the trainer's own files.
"""
