"""Named YAML presets (``configs/<name>.yaml``) and the ``base`` chain that lets one extend another.

A preset file is a partial config tree. ``base: at2po`` (a preset name, or a YAML path relative to
the file) loads that config first and merges this file's settings over it, section by section.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"
"""The repository's ``configs/`` folder, where the presets live."""

ALGORITHMS = ("at2po", "grpo", "dapo", "gspo", "aepo", "tree_grpo", "gigpo", "t2po")
"""The algorithm presets of DESIGN §4 (one name picks rollout, credit and loss)."""


def preset_names() -> list[str]:
    """Every preset in :data:`CONFIG_DIR`."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def read_config_source(source: str | Path) -> tuple[dict[str, Any], str]:
    """The merged settings of a preset name or YAML file (its ``base`` chain resolved) and the
    run name it suggests (the preset or file name)."""
    path = _locate(str(source), Path.cwd())
    return _read_chain(path, []), path.stem


def _locate(source: str, relative_to: Path) -> Path:
    if source.endswith((".yaml", ".yml")) or "/" in source:
        path = Path(source).expanduser()
        path = path if path.is_absolute() else relative_to / path
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return path
    path = CONFIG_DIR / f"{source}.yaml"
    if not path.is_file():
        names = preset_names()
        close = difflib.get_close_matches(source, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FileNotFoundError(
            f"unknown preset {source!r}{hint} Presets: {', '.join(names)}; or pass the path of "
            "a YAML file"
        )
    return path


def _read_chain(path: Path, seen: list[Path]) -> dict[str, Any]:
    if path in seen:
        chain = " → ".join(str(p) for p in [*seen, path])
        raise ValueError(f"config files extend each other in a loop: {chain}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {error.start} cannot be decoded); re-save it as UTF-8"
        ) from None
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a mapping of config sections, not {type(data).__name__}"
        )
    base = data.pop("base", None)
    if base is None:
        return data
    return merge(_read_chain(_locate(str(base), path.parent), [*seen, path]), data)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``: nested mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
