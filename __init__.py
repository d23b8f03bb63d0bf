"""ComfyUI-FourD: one image -> a 4D scene (dynamic point cloud, cameras, depth) and novel-view videos.

ComfyUI imports this file as a package (``custom_nodes/ComfyUI-FourD``); the library lives in
``fourd_core`` (no ComfyUI imports) and the node adapters in ``nodes``.
"""

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError:
    if __package__:  # imported as a package: a real error inside the pack, show it
        raise
    # imported as a plain module (e.g. pytest collecting a checkout whose folder name is not a
    # valid package name, like "ComfyUI-FourD"): there is no package to load nodes from
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
