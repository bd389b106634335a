"""``wrap`` (a loaded model) and ``load`` (a checkpoint folder) -> Engine, through the adapters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from . import adapters
from .checkpoint import folder_files, read_config
from .engine import Engine
from .errors import CheckpointError, JRTError, UnsupportedModelError
from .model import RecurrentLM
from .prompt import JRTPrompt

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# tokenizer_config.json classes that are transformers' generic fast tokenizer (the second is the first's v4 name)
GENERIC_FAST_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")
DEMO_DIR = Path(__file__).parent / "demo"
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

SUPPORTED = (
    "transformers MambaForCausalLM and Mamba2ForCausalLM, fla GLAForCausalLM, jrt_prompt's BasedForCausalLM, "
    "or a RecurrentLM"
)


def as_model(model) -> RecurrentLM:
    """The RecurrentLM for a loaded model (sharing its weights)."""
    if isinstance(model, RecurrentLM):
        return model
    for module in adapters.adapter_modules():
        if module.accepts_model(model):
            return module.from_model(model)
    raise UnsupportedModelError(f"jrt_prompt cannot wrap a {type(model).__name__}: it supports {SUPPORTED}")


def plain_fast_tokenizer(folder: Path) -> bool:
    """Whether AutoTokenizer would build ``folder``'s tokenizer as transformers' generic fast tokenizer (its
    tokenizer.json, and a tokenizer_config.json naming that class), which ``PreTrainedTokenizerFast`` builds without
    importing AutoTokenizer's machinery (about 0.3 s)."""
    try:
        tokenizer_class = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return False
    return tokenizer_class in GENERIC_FAST_TOKENIZERS and (folder / "tokenizer.json").is_file()


def _tokenizer_from(source, what: str):
    try:
        if Path(source).is_dir() and plain_fast_tokenizer(Path(source)):
            from transformers import PreTrainedTokenizerFast as tokenizer_class
        else:
            from transformers import AutoTokenizer as tokenizer_class
        tok = tokenizer_class.from_pretrained(str(source))
    except Exception as e:  # noqa: BLE001 - any failure becomes one clear line
        raise JRTError(f"could not load the tokenizer from {what} {source}: {type(e).__name__}: {e}") from None
    tok.padding_side = "left"
    return tok


def resolve_tokenizer(tokenizer, folder: Path | None):
    """A tokenizer object from what the user passed (object, path or hub name) or from beside the weights."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer
    if tokenizer is not None:
        return _tokenizer_from(tokenizer, "")
    if folder is not None and any((folder / f).is_file() for f in TOKENIZER_FILES):
        return _tokenizer_from(folder, "the checkpoint folder")
    where = f" in {folder}" if folder is not None else ""
    raise JRTError(f"no tokenizer found{where}: pass tokenizer= (a tokenizer object or the path of one)")


def wrap(model, tokenizer=None, *, prompt: JRTPrompt | None = None, **engine_options) -> Engine:
    """Wrap a loaded model (see SUPPORTED) for JRT prompting. The tokenizer defaults to the one saved
    beside the model's weights (``model.name_or_path``) when that is a local folder."""
    lm = as_model(model)
    folder = None
    name = getattr(model, "name_or_path", None)
    if tokenizer is None and name and Path(name).is_dir():
        folder = Path(name)
    return Engine(lm, resolve_tokenizer(tokenizer, folder), prompt, **engine_options)


def locate(path: str | Path) -> Path:
    """A local checkpoint folder for ``path``: a folder, ``"demo"``, or a hub repo id already downloaded or
    downloadable."""
    if str(path) == "demo":
        if not (DEMO_DIR / "config.json").is_file():
            raise CheckpointError("the demo model is not bundled with this installation")
        return DEMO_DIR
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file; a checkpoint is a folder with config.json and weights")
        return p
    if _REPO_ID.match(str(path)):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(str(path)))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(
                f"{path} is not a local folder and could not be fetched from the hub ({type(e).__name__}); "
                "download it and pass its folder") from None
    raise CheckpointError(f"no such model folder: {path}")


def load_model(path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> tuple[RecurrentLM, Path]:
    folder = locate(path)
    config = read_config(folder)
    files = folder_files(folder)
    for module in adapters.adapter_modules():
        if module.accepts_folder(config, files):
            lm = module.from_folder(folder, config, device=device, dtype=dtype)
            lm.config.max_length = _budget(config, folder)
            return lm, folder
    kind = config.get("model_type") or config.get("architectures") or "no model_type"
    raise CheckpointError(
        f"{folder} holds a checkpoint of an unsupported kind ({kind}); supported: "
        f"{adapters.supported_names()} (HF format), mamba_ssm Mamba/Mamba-2, hazyresearch Based, fla GLA")


BUDGET_FIELD = "jrt_prompt_budget"


def _budget(config: dict, folder: Path) -> int | None:
    """The prompt budget in tokens a checkpoint declares (``jrt_prompt_budget`` in config.json, e.g. the
    longest sequences the demo model was trained on); None: no limit."""
    value = config.get(BUDGET_FIELD)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CheckpointError(f"{folder}/config.json: {BUDGET_FIELD} must be a positive integer, got {value!r}")
    return value


def load(path: str | Path, tokenizer=None, *, prompt: JRTPrompt | None = None, device=None,
         dtype: torch.dtype | str | None = None, **engine_options) -> Engine:
    """Load a checkpoint folder (HF, mamba_ssm, hazyresearch Based or fla format; or ``"demo"``) for JRT
    prompting. The tokenizer comes from the folder unless one is passed."""
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}.get(dtype) or _bad_dtype(dtype)
    lm, folder = load_model(path, device=device, dtype=dtype)
    return Engine(lm, resolve_tokenizer(tokenizer, folder), prompt, **engine_options)


def _bad_dtype(name: str):
    raise JRTError(f"unknown dtype {name!r}: use float32, bfloat16 or float16")
