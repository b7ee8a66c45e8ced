"""Where the shipped default predictor lies: package data under ``maskvit_mpc/models/weights/``.

Kept free of torch so that commands can name the shipped model without importing it.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_PREDICTOR_NAME = "maskvit"  # how commands name the shipped model (--predictor, --init-from)
# MaskViT trained on simulated push data (recipes/train_default_model.sh), exported with export-predictor
DEFAULT_MODEL_FILE = "push_sim64.ts"


def default_model_path() -> Path:
    """Where the shipped MaskViT predictor lies (``maskvit_mpc/models/weights/``); it may be missing."""
    from importlib.resources import files

    return Path(str(files("maskvit_mpc.models") / "weights" / DEFAULT_MODEL_FILE))
