"""ComfyUI-free pieces of the *native* path: 4DNeX on ComfyUI's own Wan ``MODEL``.

The ComfyUI nodes in ``nodes/native/`` only adapt these functions to ComfyUI's objects
(``ModelPatcher`` wrappers and patches, ``VAE``, ``CONDITIONING``):

* :mod:`.lora_keys`: the official 4DNeX LoRA (diffusers key layout) converted to ComfyUI's
  ``diffusion_model.blocks.N.self_attn.q`` layout, with shape checks against the loaded model;
* :mod:`.layout`: the width-fused condition video, the I2V mask in ComfyUI's convention
  (1 = generate), shared RoPE positions, domain embeddings on tokens, the XYZ latent
  de-normalisation in ComfyUI's raw latent space;
* :mod:`.tiny_wan`: a tiny random Wan2.1-I2V DiT written in the original Wan key layout (head dim 128,
  text width 4096, CLIP width 1280, as ComfyUI's loader requires) plus a matching tiny 4DNeX release.
"""
