"""Segmentation stages (mmsegmentation 1.x): our heads, dataset classes, training, evaluation.

Importing this package is light. `register_modules()` imports the modules that register
classes in mmseg's registries (the DAFormer and DeepLabV2 heads, HRDA's head and segmentor,
the dataset classes, and the checkpoint hook); the
configs we write list the same modules under `custom_imports`, so
`mmseg.apis.init_model(config.py)` finds them too. The models by name: `catalog.py`.
"""

from __future__ import annotations

REGISTERED_MODULES = (
    "dginstyle.segmentation.daformer_head",
    "dginstyle.segmentation.dlv2_head",
    "dginstyle.segmentation.hrda_head",
    "dginstyle.segmentation.hrda_encoder_decoder",
    "dginstyle.segmentation.datasets",
    "dginstyle.segmentation.checkpoint_hook",
)


def register_modules() -> None:
    """Import mmseg (with the mmcv-lite stand-in) and register our head and dataset classes."""
    import importlib

    for name in REGISTERED_MODULES:
        importlib.import_module(name)
