"""Model specs and loading: a hub id, a local checkpoint folder or a GGUF file, plus a temperature transform.

Spec grammar (`parse_model_spec`)::

    SPEC  := BASE [":temperature=" T] [":dtype=" D] [":chat"]
             D: float32 | bfloat16 | float16 | bfloat16-weights (overrides --dtype); chat: prompts through the
             chat template
    BASE  := HUB_ID ["@" REVISION]      e.g. HuggingFaceTB/SmolLM2-135M-Instruct@main
           | FOLDER                     a transformers checkpoint folder (config.json + weights)
           | FILE.gguf                  a GGUF checkpoint (converted once to safetensors, then cached)

A path that exists is a path, even when it looks like a hub id (transformers does the same).

A hub id's branch or tag (none = `main`) is resolved to a commit by the hub whenever it can be asked, even
when the local HF cache holds a snapshot: the local ref is only what was downloaded last, and a freshly
pushed aligned candidate must not be judged as the old one. Offline (HF_HUB_OFFLINE) or with the hub
unreachable, the local ref is used with a `StaleRevisionWarning`; a full 40-hex commit needs no hub call
when its snapshot is local. The identity always names the full commit, and loading pins it.

The temperature transform is a documented, controlled perturbation: the scorer divides the model's logits
by T before its fp32 log-softmax, so log p_T(token) = log_softmax(logits / T). T < 1 sharpens every
distribution (a simulated over-confident release), T > 1 flattens it, T = 1 leaves the model untouched.
It is part of the model's identity and label, so cached scores never mix temperatures. The dtype transform
runs one side in another precision than the gate's --calib-dtype (a real precision release: the same weights
in bfloat16 against float32); it is part of the identity and label too. `bfloat16-weights` is a weight-only
variant of it: every parameter rounded to bfloat16 (round to nearest even) and the arithmetic in float32, so
activations are not rounded; it is a real quantisation of the weights (what a bf16 checkpoint holds) that runs
at float32 speed on a CPU without native bf16, where bf16 arithmetic falls to a reference kernel
(`calib_checks.machine`). It has its own identity (`"dtype": "bfloat16-weights"`), label (`@bf16-weights`) and
cache keys, and is used only where asked for (`make demo` picks it on such a CPU and says so); an explicit
bfloat16 is never replaced. Asking for bf16 or fp16 arithmetic on a CPU without native support warns once per
process with the slow-down measured then (`machine.warn_if_slow`). `:chat` renders every prompt (the
continuation context and the lettered prompt alike) through the tokenizer's chat template, as the user turn
followed by the generation prompt; the options and letters are then scored after the rendered text with the
usual boundary rules (trailing whitespace of the rendered text moves to the continuation). Off by default, as
in the seed study and lm-eval; a model without a chat template asked for one is a load error. In the identity
(`chat`) and the label (`@chat`), so cached scores never mix the two.

Loading follows lm-evaluation-harness's HFLM where it matters for the numbers (reference facts, section 3):
- BOS is prepended only for the Gemma family (`"gemma" in config.model_type`), as older lm-eval 0.4.x HFLM
  forced `add_bos_token=True` there; lm-eval 0.4.13 instead leaves BOS to the tokenizer's default, which
  adds one for Gemma and not for Llama-style byte-level BPE (SmolLM2), so both rules agree on the models
  measured in bench/RESULTS.md;
- `max_length` is the first of the config's `n_positions`, `max_position_embeddings`, `n_ctx`, else the
  tokenizer's `model_max_length` unless it is the "infinite" sentinel, else 2048.
Departures: dtype `auto` means bf16 on CUDA and fp32 on CPU (HFLM's `auto` keeps the checkpoint's dtype),
and the attention implementation is chosen for the scorer's own masks (`attention_order`): on CUDA
`flex_attention` where the model class has it (a block mask, no dense [batch, 1, seq, seq] tensor), else
`sdpa` with a dense 4D mask (eager when a model has no sdpa kernel); on CPU the dense mask, where compiled
flex attention loses to sdpa on rows of a few hundred tokens.

GGUF: transformers dequantises a GGUF file at every `from_pretrained` (tens of seconds for a 100 MB file)
and refuses `save_pretrained` on the result, so the first load builds a fresh model from the GGUF model's
config (without `quantization_config`), moves the dequantised fp32 state dict into it, and saves model +
tokenizer as safetensors in `cache_dir()/models/<sha256 of the file>/` (temporary folder renamed into place,
under a file lock, so concurrent processes convert once). Later loads read that folder in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from filelock import FileLock

from calib_checks.cache import cache_dir
from calib_checks.errors import CalibChecksError
from calib_checks.fileio import atomic_write_bytes, canonical_json

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SourceKind = Literal["hub", "folder", "gguf"]

_HUB_ID = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
_TRANSFORM = re.compile(r"^(?P<base>.*):(?P<key>[A-Za-z_]+)=(?P<value>[^:]*)$")
_FLAG = re.compile(r"^(?P<base>.*):(?P<key>chat)$")  # transforms without a value
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16-weights": "bfloat16-weights", "bf16-weights": "bfloat16-weights",
}  # fmt: skip
# Weight-only variants: the parameters rounded to this dtype after loading, the arithmetic in float32.
_ROUNDED_WEIGHTS = {"bfloat16-weights": "bfloat16"}
# Folder names that say nothing about the model; the label then adds the parent folder's name.
_GENERIC_FOLDER = re.compile(r"^(checkpoint[-_]?\d*|final|latest|best|model|hf|export|output|[0-9a-f]{40})$", re.I)
# Files that determine a checkpoint's outputs: weights, their index, config, tokenizer, remote code.
_IDENTITY_FILES = re.compile(
    r"^(.*\.safetensors|pytorch_model.*\.bin|.*\.index\.json|config\.json|tokenizer.*|special_tokens_map\.json"
    r"|added_tokens\.json|vocab\..*|merges\.txt|.*\.model|.*\.tiktoken|.*\.py)$"
)
_HASH_CHUNK = 8 << 20
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# A blob name in the HF cache: the LFS sha256, or the git blob sha1 of a file kept in git.
_ETAG = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# Attention choices (`attention_order`): "dense" = a dense 4D mask through sdpa (eager for a model class without
# an sdpa kernel), "flex" = flex_attention's BlockMask only, "auto" = flex on CUDA where it is there, else dense.
ATTENTION_CHOICES = ("auto", "flex", "dense")
_DENSE_ATTENTION = ("sdpa", "eager")
_GGUF_MAGIC = b"GGUF"
_GGUF_MARKER = "calib_checks_gguf.json"
# HFLM's fallback when neither config nor tokenizer gives a length, and the tokenizer's "no limit" sentinel.
_DEFAULT_MAX_LENGTH = 2048
_TOKENIZER_INFINITY = 1000000000000000019884624838656


class ModelLoadError(CalibChecksError):
    """A model spec is malformed, or the model it names cannot be found or loaded."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec (see the module docstring for the grammar).

    `name` is the hub id, or the absolute path of the folder / GGUF file; `revision` applies to hub ids
    only; `temperature` divides the logits (1.0 = untouched).
    """

    text: str
    source: SourceKind
    name: str
    revision: str | None = None
    temperature: float = 1.0
    dtype: str | None = None  # from ":dtype=D"; None = the run's dtype
    chat: bool = False  # from ":chat": prompts rendered through the tokenizer's chat template

    @property
    def label(self) -> str:
        """Short, filesystem-safe name, e.g. `SmolLM2-135M-Instruct` or `SmolLM2-135M-Instruct@T0.5`."""
        path = Path(self.name)
        if self.source == "hub":
            base = self.name.split("/")[-1] + (f"@{self.revision[:12]}" if self.revision else "")
        elif self.source == "gguf":
            base = path.stem
        elif path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
            # A folder inside the HF cache: models--org--name/snapshots/<commit>.
            base = f"{path.parent.parent.name.split('--')[-1]}@{path.name[:12]}"
        elif _GENERIC_FOLDER.match(path.name) and path.parent.name:
            base = f"{path.parent.name}-{path.name}"
        else:
            base = path.name
        if self.temperature != 1.0:
            base += f"@T{str(self.temperature).removesuffix('.0')}"  # shortest exact repr: no two collide
        if self.dtype is not None:
            base += f"@{_DTYPE_SHORT[self.dtype]}"
        if self.chat:
            base += "@chat"
        safe = re.sub(r"[^A-Za-z0-9._@+-]", "_", base).lstrip(".")
        return safe[:100] or "model"

    def __str__(self) -> str:
        return self.text


def _spec_error(text: str, problem: str, fix: str) -> ModelLoadError:
    return ModelLoadError(f"model spec {text!r}: {problem}; {fix}")


def _parse_temperature(text: str, value: str) -> float:
    try:
        temperature = float(value)
    except ValueError:
        temperature = float("nan")
    if not (math.isfinite(temperature) and temperature > 0):
        raise _spec_error(text, f"temperature {value!r} is not a finite number > 0", "write e.g. ':temperature=0.5'")
    return temperature


_DTYPE_SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "bfloat16-weights": "bf16-weights"}


def _parse_dtype(text: str, value: str) -> str:
    if value not in _DTYPE_SHORT:
        raise _spec_error(text, f"dtype {value!r} is not one of {', '.join(_DTYPE_SHORT)}", "write e.g. ':dtype=bfloat16'")
    return value


def _looks_like_path(base: str) -> bool:
    return base.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in base or base.count("/") > 1


def parse_model_spec(text: str, revision: str | None = None) -> ModelSpec:
    """Parse `NAME[@REV][:temperature=T]` into a `ModelSpec`; `revision` is the `--revision` option.

    Local paths are checked here (so a typo fails before any work); hub ids are checked when resolved.
    Raises `ModelLoadError` naming the spec and how to fix it.
    """
    if not isinstance(text, str) or not text.strip():
        raise ModelLoadError(
            "empty model spec: pass a hub id (org/name[@revision]), a checkpoint folder or a .gguf file"
        )
    text = text.strip()
    base, temperature, dtype, chat, seen = text, 1.0, None, False, set()
    while (match := _TRANSFORM.match(base) or _FLAG.match(base)) and not Path(base).expanduser().exists():
        key = match["key"]
        if key not in ("temperature", "dtype", "chat"):
            raise _spec_error(text, f"unknown transform {key!r}",
                              "the transforms are ':temperature=T', ':dtype=D' and ':chat'")
        if key in seen:
            raise _spec_error(text, f"{key} given twice", f"give ':{key}' once")
        seen.add(key)
        if key == "temperature":
            temperature = _parse_temperature(text, match["value"])
        elif key == "dtype":
            dtype = _parse_dtype(text, match["value"])
        else:
            chat = True
        base = match["base"]
    if not base:
        raise _spec_error(text, "no model before the transform", "write MODEL:temperature=T")

    path = Path(base).expanduser()
    is_gguf = base.lower().endswith(".gguf")
    if path.exists() or is_gguf or _looks_like_path(base):
        if revision is not None:
            raise _spec_error(text, "a revision applies only to hub ids", "drop --revision for a local path")
        if not path.exists():
            at = base.rfind("@")
            if at > 0 and Path(base[:at]).expanduser().exists():
                raise _spec_error(text, "a revision applies only to hub ids", "drop '@...' from the local path")
            what = "GGUF file" if is_gguf else "model folder"
            raise _spec_error(text, f"{what} {str(path.absolute())!r} does not exist", "check the path")
        path = path.resolve()
        if is_gguf:
            if not path.is_file():
                raise _spec_error(text, f"{str(path)!r} is not a file", "pass the .gguf file itself")
            return ModelSpec(text=text, source="gguf", name=str(path), temperature=temperature, dtype=dtype,
                             chat=chat)
        if not path.is_dir():
            raise _spec_error(
                text, f"{str(path)!r} is a file", "pass a checkpoint folder (config.json + weights) or a .gguf file"
            )
        return ModelSpec(text=text, source="folder", name=str(path), temperature=temperature, dtype=dtype,
                         chat=chat)

    name, _, rev = base.partition("@")
    if ":" in base:
        raise _spec_error(text, "unexpected ':'", "a transform is written MODEL:temperature=T")
    if not _HUB_ID.match(name):
        raise _spec_error(
            text,
            f"{name!r} is neither an existing path nor a hub id",
            "pass org/name[@revision], an existing checkpoint folder or a .gguf file",
        )
    if "@" in base and not (rev and _REVISION.match(rev)):
        raise _spec_error(text, f"bad revision {rev!r}", "write org/name@<branch, tag or commit>")
    if revision is not None:
        if rev and rev != revision:
            raise _spec_error(text, f"revision given twice ({rev!r} and {revision!r})", "give it once")
        if not _REVISION.match(revision):
            raise _spec_error(text, f"bad revision {revision!r}", "pass a branch, tag or commit")
        rev = revision
    return ModelSpec(text=text, source="hub", name=name, revision=rev or None, temperature=temperature,
                     dtype=dtype, chat=chat)


@dataclass
class LoadedModel:
    """A model ready for the scorer. Fields as in docs/ARCHITECTURE.md (`models.LoadedModel`)."""

    spec: ModelSpec
    label: str
    model: Any
    tokenizer: Any
    temperature: float
    input_device: torch.device
    dtype: torch.dtype
    add_bos: bool
    max_length: int
    identity: dict
    chat: bool = False  # prompts go through the tokenizer's chat template (render_prompt)


def render_prompt(model: LoadedModel, prompt: str) -> str:
    """The text a prompt is scored after: `prompt` itself, or under `:chat` the tokenizer's chat template with
    `prompt` as the user turn followed by the generation prompt (the assistant's turn begins; the option or
    letter is what it would say)."""
    if not model.chat:
        return prompt
    return model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)


# ---------------------------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto") -> str:
    """`auto` = `cuda` when available, else `cpu`; otherwise the named device, checked to exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"unknown device {device!r} ({exc}): use auto, cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available: use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def worker_device(device: str, worker: int, n_workers: int) -> str:
    """The device an xdist worker scores on: under `auto` on a machine with several GPUs, GPU (worker mod count),
    so that the workers split the GPUs; otherwise `device` as given (workers on one GPU share it)."""
    if n_workers == 1 or device != "auto":
        return device
    import torch

    count = torch.cuda.device_count()
    return f"cuda:{worker % count}" if count > 1 else device


def dtype_name(dtype: str | torch.dtype = "auto", device: str = "auto") -> str:
    """The canonical name of a dtype choice: `float32`, `bfloat16`, `float16` or `bfloat16-weights`
    (`auto` = bfloat16 on CUDA, float32 elsewhere; aliases fp32/bf16/fp16/half/bf16-weights accepted)."""
    import torch

    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ModelLoadError(f"dtype {dtype} is not supported: use float32, bfloat16 or float16")
        return str(dtype).removeprefix("torch.")
    if dtype == "auto":
        return "bfloat16" if resolve_device(device).startswith("cuda") else "float32"
    name = _DTYPES.get(str(dtype).lower())
    if name is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16, float16 or bfloat16-weights")
    return name


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "auto") -> torch.dtype:
    """The dtype the model computes in: `dtype_name`'s, with `bfloat16-weights` computing in float32."""
    import torch

    name = dtype_name(dtype, device)
    return torch.float32 if name in _ROUNDED_WEIGHTS else getattr(torch, name)


# ---------------------------------------------------------------------------------------------- identity


class StaleRevisionWarning(UserWarning):
    """A hub model's branch or tag was read from the local HF cache without asking the hub (offline, or the
    hub unreachable): a commit pushed since would not be seen, so the gate may be judging an old model."""


def _hash_cache_path(path: Path) -> Path:
    return cache_dir() / "hashes" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"


def _file_state(path: Path, stat: os.stat_result) -> dict:
    """What must be unchanged for a remembered hash to still hold. Size and mtime alone are not enough: a
    file replaced with the same size and mtime (`cp --preserve`, a restore, `os.utime`) gets a new inode or
    a new ctime, and ctime cannot be set back from user space."""
    return {
        "path": str(path),
        "device": stat.st_dev,
        "inode": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
    }


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, streamed; remembered per (real path, device, inode, size, mtime, ctime) so
    big files hash once.

    A file inside the HF hub cache is content-addressed: its blob's name already is its sha256.
    """
    path = Path(path).resolve()
    if path.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", path.name):
        return path.name
    state = _file_state(path, path.stat())
    memo = _hash_cache_path(path)
    try:
        saved = json.loads(memo.read_text())
        if {name: saved.get(name) for name in state} == state:
            return str(saved["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no memo yet, or an unreadable one: hash again
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    sha = digest.hexdigest()
    try:
        atomic_write_bytes(memo, json.dumps({**state, "sha256": sha}).encode())
    except OSError as exc:  # a read-only cache only costs re-hashing next time
        log.debug("could not remember the hash of %s: %s", path, exc)
    return sha


def _manifest_fingerprint(manifest: list[dict], where: str) -> str:
    """sha256 of a checkpoint's file manifest (one dict per identity file), refusing one without weights."""
    if not any(item["name"].endswith((".safetensors", ".bin")) for item in manifest):
        raise ModelLoadError(
            f"no weights (*.safetensors or pytorch_model*.bin) in {where}: pass a transformers checkpoint "
            "(config.json + weights)"
        )
    return hashlib.sha256(canonical_json(sorted(manifest, key=lambda item: item["name"])).encode()).hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over (name, size, sha256) of the files that determine the outputs (weights, index, config,
    tokenizer, remote code). Content-based: a checkpoint retrained in place gets a new fingerprint."""
    manifest = [
        {"name": entry.name, "size": entry.stat().st_size, "sha256": file_sha256(entry)}
        for entry in folder.iterdir()
        if entry.is_file() and _IDENTITY_FILES.match(entry.name)
    ]
    return _manifest_fingerprint(manifest, repr(str(folder)))


def _snapshot_manifest(spec: ModelSpec, snapshot: Path) -> list[dict]:
    """(name, size, etag) of the identity files of a local HF cache snapshot.

    huggingface_hub stores each file once as `blobs/<etag>` (the LFS sha256, or the git blob sha1 of a
    small file) and links `snapshots/<commit>/<name>` to it, so the etags are read from the links: the
    same values the hub reports (`_hub_manifest`), without hashing gigabytes.
    """
    manifest = []
    for entry in snapshot.iterdir():
        if not (entry.is_file() and _IDENTITY_FILES.match(entry.name)):
            continue
        blob = Path(os.path.realpath(entry))
        if blob.parent.name != "blobs" or not _ETAG.match(blob.name):
            raise ModelLoadError(
                f"model {spec.text!r}: {entry} in the local Hugging Face cache is not a link to its blob "
                "(blobs/<etag>), so its hub fingerprint is unknown: re-download it with huggingface_hub, or "
                "pass the snapshot folder as a local folder"
            )
        manifest.append({"name": entry.name, "size": blob.stat().st_size, "etag": blob.name})
    return manifest


def _hub_manifest(info: Any) -> list[dict]:
    """(name, size, etag) of a hub commit's top-level identity files, from `model_info(files_metadata=True)`:
    the LFS sha256 for LFS files, else the git blob id, i.e. the names of the blobs a download creates."""
    return [
        {
            "name": s.rfilename,
            "size": s.lfs.size if s.lfs else s.size,
            "etag": s.lfs.sha256 if s.lfs else s.blob_id,
        }
        for s in info.siblings or []
        if "/" not in s.rfilename and _IDENTITY_FILES.match(s.rfilename)
    ]


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local HF cache's snapshot folder of `repo_id` at `revision` (branch, tag or commit), if any."""
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return Path(cached).parent if isinstance(cached, str) else None


def _full_commit(spec: ModelSpec, commit: str) -> str:
    if not _COMMIT.match(commit):
        raise ModelLoadError(
            f"model {spec.text!r} resolved to {commit!r}, which is not a full 40-hex commit sha: pin "
            "SPEC@<full commit> or re-download the model"
        )
    return commit


def _resolve_hub(spec: ModelSpec) -> tuple[str, str]:
    """(full commit sha, weights fingerprint) of a hub spec; loading then pins that commit.

    A full commit in the spec needs no hub call when its snapshot is local. A branch or tag (or none:
    `main`) is resolved by the hub whenever it can be asked, even when a snapshot is local, because the
    local ref is only what was last downloaded: a freshly pushed candidate must not be judged as the old
    one. Only offline (HF_HUB_OFFLINE) or with the hub unreachable is the local ref used, with a
    `StaleRevisionWarning`. Both ways the fingerprint is taken over the same (name, size, etag) manifest,
    so one commit gives one identity whichever way it was resolved. (A snapshot that lacks some of the
    commit's top-level identity files, a partial download, fingerprints differently offline: a cache miss,
    never a wrong hit.)
    """
    where = f"{spec.name}@{spec.revision}" if spec.revision else spec.name
    snapshot = _hub_snapshot(spec.name, spec.revision)
    if snapshot is not None and spec.revision is not None and _COMMIT.match(spec.revision):
        return spec.revision, _manifest_fingerprint(_snapshot_manifest(spec, snapshot), f"{where} (local)")
    if _hub_offline():
        if snapshot is None:
            raise ModelLoadError(
                f"model {spec.text!r}: {where} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE): download it first, unset HF_HUB_OFFLINE, or pass a local folder"
            )
        why = "HF_HUB_OFFLINE is set"
    else:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            info = HfApi().model_info(spec.name, revision=spec.revision, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
            # The hub answered: a local copy of a deleted or renamed revision is not what the spec names.
            raise ModelLoadError(
                f"model {spec.text!r}: the Hugging Face hub has no {where} ({_first_line(exc)}); check the id "
                "and revision, and log in (hf auth login) if the model is private or gated"
            ) from None
        except Exception as exc:  # noqa: BLE001 - network, timeout, server error: the hub could not be asked
            if snapshot is None:
                raise ModelLoadError(
                    f"model {spec.text!r}: cannot reach {where} on the Hugging Face hub ({_first_line(exc)}); "
                    "check the id and your network, or pass a local folder (a local folder that does not "
                    "exist is read as a hub id)"
                ) from None
            why = f"the hub could not be reached: {_first_line(exc)}"
        else:
            commit = _full_commit(spec, str(info.sha))
            return commit, _manifest_fingerprint(_hub_manifest(info), f"{spec.name}@{commit} on the hub")
    commit = _full_commit(spec, snapshot.name)
    warnings.warn(
        f"model {spec.text!r}: scoring {spec.name}@{commit}, the local Hugging Face cache's "
        f"{spec.revision or 'main'!r}, which could not be checked against the hub ({why}); a newer push would "
        "not be seen: run online or pin SPEC@<full commit>",
        StaleRevisionWarning,
        stacklevel=3,
    )
    return commit, _manifest_fingerprint(_snapshot_manifest(spec, snapshot), f"{spec.name}@{commit} (local)")


def model_identity(spec: ModelSpec | str, dtype: str | torch.dtype = "auto", device: str = "auto") -> dict:
    """What a model's scores depend on, WITHOUT loading its weights (the cache key's model part).

    `{"source", "name" (hub id or absolute path), "revision" (full hub commit sha, else None), "weights"
    (fingerprint: sha256 of the GGUF file; of the folder's weight/index/config/tokenizer files' contents;
    for a hub commit, of those files' hub etags, see `_resolve_hub`), "dtype" (resolved; device matters
    only through it), "temperature"}`. The software it is scored with is `software_stack`'s business.
    """
    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    dtype = spec.dtype or dtype
    revision = None
    if spec.source == "hub":
        revision, weights = _resolve_hub(spec)
    elif spec.source == "gguf":
        _check_gguf_file(spec)
        weights = file_sha256(spec.name)
    else:
        _check_folder(spec)
        weights = _folder_fingerprint(Path(spec.name))
    return {
        "source": spec.source,
        "name": spec.name,
        "revision": revision,
        "weights": weights,
        "dtype": dtype_name(dtype, device),
        "temperature": spec.temperature,
        "chat": spec.chat,
    }


def describe_identity(identity: Mapping[str, Any]) -> str:
    """A short human name for what was scored, for failure messages and the report, e.g.
    `HuggingFaceTB/SmolLM2-135M@0123456789ab` or `folder /abs/path (weights 0123456789ab)`, plus
    `at temperature T` when T is not 1. Tolerates identities read back from older files (missing keys)."""
    source, name = identity.get("source"), identity.get("name", "?")
    if source == "hub":
        text = f"{name}@{str(identity.get('revision'))[:12]}"
    elif source in ("folder", "gguf"):
        text = f"{source} {name} (weights {str(identity.get('weights'))[:12]})"
    else:
        text = str(name)
    temperature = identity.get("temperature", 1.0)
    if temperature != 1.0:
        text += f" at temperature {temperature:g}"
    if identity.get("dtype") in _ROUNDED_WEIGHTS:
        text += f" with {_ROUNDED_WEIGHTS[identity['dtype']]}-rounded weights in float32 arithmetic"
    elif identity.get("dtype"):
        text += f" in {identity['dtype']}"
    if identity.get("chat"):
        text += " through its chat template"
    return text


def attention_order(device: str = "auto", attention: str = "auto") -> tuple[str, ...]:
    """The attention implementations `load_model` asks transformers for, in order (the next when a model class
    lacks one), for a device (`resolve_device`'s argument) and an `ATTENTION_CHOICES` entry.

    auto: flex_attention first on CUDA when torch has it (>= 2.5), then the dense kinds; dense only on CPU.
    flex: CUDA only. On CPU, transformers compiles torch's flex kernel to C++, and torch 2.13's CPU kernel is not
    trustworthy: with AVX2 vector code (an AVX2-only CPU, or ``ATEN_CPU_CAPABILITY=avx2``) it returned attention
    outputs off by up to 3.0 from its own uncompiled reference on a 40-token causal mask, and crashed the process
    on the tiny Gemma 3 of the tests (measured 2026-12-04); with AVX-512 code it fails to recompile for a second
    shape. A release gate does not run a kernel that is wrong on some CPUs, and sdpa over rows of 256 tokens is at
    least as fast there. (The tests check the block mask on CPU through torch's uncompiled flex_attention.)
    """
    import importlib.util

    import torch

    if attention not in ATTENTION_CHOICES:
        raise ModelLoadError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTION_CHOICES)}")
    flex = ("flex_attention",) if importlib.util.find_spec("torch.nn.attention.flex_attention") else ()
    if attention == "flex":
        if not flex:
            raise ModelLoadError(f"attention 'flex' needs torch >= 2.5 (this is {torch.__version__}); use 'dense'")
        if torch.device(resolve_device(device)).type != "cuda":
            raise ModelLoadError(f"attention 'flex' runs on CUDA only (device {device!r} here): torch's compiled CPU "
                                 "flex kernel gives wrong attention with AVX2 code; use 'dense' or 'auto' on CPU")
        return flex
    if attention == "auto" and torch.device(resolve_device(device)).type == "cuda":
        return flex + _DENSE_ATTENTION
    return _DENSE_ATTENTION


def software_stack(device: str = "auto", attention: str = "auto") -> dict:
    """The software and hardware kind the scores are computed with, known without loading any weights
    (the cache key's `stack` part, and `TaskScores.stats["stack"]`): an upgrade of torch, transformers
    or tokenizers, of calib-checks, a CPU run against a CUDA run, must not reuse or be compared as if it
    were the other's scores.

    `{"calib_checks", "torch", "transformers", "tokenizers" (versions), "device" ("cpu", "cuda", ...:
    the type, not the index), "attention"}`, on CPU also "cpu_capability" (torch's vector code: AVX2, AVX512,
    ...). `attention` is the implementations `load_model` asks for, in order (`attention_order`): which one a
    model gets is decided by transformers from the model's own files and the transformers version, both already in the key, and
    knowing it before loading would mean importing the model class (remote code included).
    """
    import tokenizers
    import torch
    import transformers

    from calib_checks import __version__

    kind = torch.device(resolve_device(device)).type
    stack = {
        "calib_checks": __version__,
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "device": kind,
        "attention": list(attention_order(device, attention)),
    }
    if kind == "cpu":
        # The vector code torch dispatches to (AVX2, AVX-512, ...) moves float32 scores by 1e-7 to 2e-5: a cache
        # shared by two kinds of CPU (a home folder on NFS) must not hand one's scores to the other.
        stack["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return stack


# ---------------------------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _check_folder(spec: ModelSpec) -> None:
    folder = Path(spec.name)
    if not folder.is_dir():
        raise ModelLoadError(f"model {spec.text!r}: folder {spec.name!r} does not exist: check the path")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"model {spec.text!r}: no config.json in {spec.name!r}: pass a transformers checkpoint folder "
            "(config.json + weights), e.g. one written by save_pretrained"
        )


def _check_gguf_file(spec: ModelSpec) -> None:
    path = Path(spec.name)
    if not path.is_file():
        raise ModelLoadError(f"model {spec.text!r}: GGUF file {spec.name!r} does not exist: check the path")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(
            f"model {spec.text!r}: {spec.name!r} is not a GGUF file (it does not start with 'GGUF'): "
            "re-download it or pass the right file"
        )


def gguf_converted(path: str | Path) -> bool:
    """Whether the GGUF file at `path` already has its safetensors conversion in `cache_dir()` (its next load
    takes about a second instead of a conversion)."""
    return (cache_dir() / "models" / file_sha256(Path(path).resolve()) / _GGUF_MARKER).is_file()


def _gguf_folder(spec: ModelSpec, sha256: str) -> Path:
    """The safetensors conversion of a GGUF file, made once per file content (see the module docstring)."""
    models = cache_dir() / "models"
    target = models / sha256
    if (target / _GGUF_MARKER).is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f"{sha256}.lock")):
        if (target / _GGUF_MARKER).is_file():  # another process converted it while we waited
            return target
        if target.exists():  # not made by an atomic rename of ours: do not trust it
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(dir=models, prefix=f".tmp-{sha256[:16]}-"))
        try:
            _convert_gguf(spec, tmp)
            marker = {"gguf": spec.name, "sha256": sha256, "converted_by": "calib-checks"}
            (tmp / _GGUF_MARKER).write_text(json.dumps(marker, indent=2))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(spec: ModelSpec, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(spec.name)
    log.warning("converting GGUF %s to safetensors once (dequantising takes a while)", path)
    try:
        quantised = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types for a bad file
        raise ModelLoadError(
            f"model {spec.text!r}: cannot read GGUF file {spec.name!r} ({_first_line(exc)}): check that the file "
            "is complete and its architecture is supported by transformers"
        ) from None
    # save_pretrained refuses a GGUF-loaded model; a fresh model of the same config (without the GGUF
    # quantization_config) takes its dequantised tensors and saves normally. Built on the meta device
    # so that no time is spent on a random initialisation that is overwritten anyway.
    config_dict = quantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantised.config).from_dict(config_dict)
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(quantised.state_dict(), strict=True, assign=True)
    fresh.tie_weights()
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # Fail closed: the saved checkpoint must give the GGUF model's logits (a dropped tie or a config
    # field lost on the way would change every score silently).
    ids = tokenizer("Question: Which of these is a calibration check?\nAnswer: A", return_tensors="pt").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.inference_mode():
        expected, got = quantised(input_ids=ids).logits, reloaded(input_ids=ids).logits
    error = float((expected - got).abs().max())
    if not error <= 1e-4 * (1 + float(expected.abs().max())):
        raise ModelLoadError(
            f"model {spec.text!r}: the safetensors conversion of {spec.name!r} changes its logits by {error:.3g}; "
            "report this model (the GGUF conversion does not support it)"
        )


def _max_length(config: Any, tokenizer: Any) -> int:
    # HFLM reads the top-level config only; a multimodal config keeps the length in its text config.
    for cfg in (config, config.get_text_config()):
        for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
            value = getattr(cfg, attr, None)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _TOKENIZER_INFINITY:
        return limit
    return _DEFAULT_MAX_LENGTH


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name.endswith((".safetensors", ".bin")))


def _needs_device_map(folder: Path | None, dtype: torch.dtype) -> bool:
    """device=auto: spread with accelerate when there are several GPUs or the weights exceed one GPU."""
    import torch

    if not torch.cuda.is_available():
        return False
    if torch.cuda.device_count() > 1:
        return True
    if folder is None:
        return False
    config = json.loads((folder / "config.json").read_text())
    stored = config.get("dtype") or config.get("torch_dtype") or "float32"
    stored_size = 4 if str(stored).endswith("32") else 2
    needed = _weights_bytes(folder) * dtype.itemsize / stored_size
    free, _ = torch.cuda.mem_get_info(0)
    return needed > 0.9 * free


def _from_pretrained(source: str, kwargs: dict, attention: tuple[str, ...]) -> Any:
    from transformers import AutoModelForCausalLM

    for n, kind in enumerate(attention):
        try:
            return AutoModelForCausalLM.from_pretrained(source, attn_implementation=kind, **kwargs)
        except ValueError as exc:
            # transformers names the implementation a model class lacks ("scaled_dot_product" for sdpa).
            named = kind in str(exc) or (kind == "sdpa" and "scaled_dot_product" in str(exc))
            if not named or n + 1 == len(attention):
                raise
            log.warning("%s has no %s attention; trying %s attention", source, kind, attention[n + 1])
    raise AssertionError("attention_order returns at least one implementation")


def load_model(
    spec: ModelSpec | str,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    attention: str = "auto",
) -> LoadedModel:
    """Load a causal LM and its tokenizer for scoring, in eval mode, gradients off.

    device: `auto` (cuda when available, else cpu; accelerate's `device_map="auto"` across GPUs when there
    are several or the model exceeds one GPU), `cpu`, `cuda`, `cuda:N`. dtype: see `dtype_name`
    (`bfloat16-weights`: bf16-rounded weights, float32 arithmetic).
    attention: an `ATTENTION_CHOICES` entry (see `attention_order`).
    `trust_remote_code` runs the checkpoint's own Python code: only when asked for.
    Raises `ModelLoadError` with one line naming the model and what to do.
    """
    import torch

    spec = parse_model_spec(spec) if isinstance(spec, str) else spec
    dtype = spec.dtype or dtype
    identity = model_identity(spec, dtype, device)
    torch_dtype = resolve_dtype(dtype, device)
    target = resolve_device(device)
    attention_kinds = attention_order(device, attention)
    if torch.device(target).type == "cpu" and torch_dtype != torch.float32:
        from calib_checks.machine import warn_if_slow

        warn_if_slow(torch_dtype, f"model {spec.text!r}")

    if spec.source == "hub":
        # Pin the commit the identity was computed for; its size is known once it is local.
        source, revision = spec.name, identity["revision"]
        folder = _hub_snapshot(spec.name, revision)
    elif spec.source == "gguf":
        folder = _gguf_folder(spec, identity["weights"])
        source, revision = str(folder), None
    else:
        folder = Path(spec.name)
        source, revision = spec.name, None

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if revision is not None:
        kwargs["revision"] = revision
    if device == "auto" and _needs_device_map(folder, torch_dtype):
        kwargs["device_map"] = "auto"
    elif target != "cpu":
        kwargs["device_map"] = {"": target}
    try:
        model = _from_pretrained(source, kwargs, attention_kinds)
        tokenizer_kwargs = {"trust_remote_code": trust_remote_code}
        if revision is not None:
            tokenizer_kwargs["revision"] = revision
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, **tokenizer_kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers/hub/safetensors raise many types
        if "trust_remote_code" in str(exc):
            hint = "the checkpoint has custom code: pass --trust-remote-code if you trust it"
        elif "out of memory" in str(exc).lower():
            hint = "it does not fit: use --dtype bfloat16, --device auto on a machine with more GPU memory, or cpu"
        else:
            hint = "check that the checkpoint is complete and supported by this transformers version"
        raise ModelLoadError(f"model {spec.text!r} failed to load ({_first_line(exc)}): {hint}") from None

    if spec.chat and not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"model {spec.text!r} has no chat template (its tokenizer defines none): drop ':chat' "
                             "to score the plain prompts, or use a checkpoint that ships a template")
    model.eval()
    model.requires_grad_(False)
    rounding = _ROUNDED_WEIGHTS.get(identity["dtype"])
    if rounding is not None:
        if any(parameter.device.type == "meta" for parameter in model.parameters()):
            # Offloaded weights (device_map="auto" short of memory) are placeholders here: rounding them would do
            # nothing, and scores labelled bf16-weights would come from unrounded weights.
            raise ModelLoadError(f"model {spec.text!r}: dtype bfloat16-weights needs every weight in memory, but "
                                 "some were offloaded: use dtype bfloat16 on a GPU, or a machine with more memory")
        with torch.no_grad():  # round to nearest even, as a bf16 checkpoint holds them; then back to float32
            for parameter in model.parameters():
                parameter.copy_(parameter.to(getattr(torch, rounding)))
    config = model.config
    return LoadedModel(
        spec=spec,
        label=spec.label,
        model=model,
        tokenizer=tokenizer,
        temperature=spec.temperature,
        input_device=model.get_input_embeddings().weight.device,
        dtype=torch_dtype,
        add_bos="gemma" in (getattr(config, "model_type", "") or ""),
        max_length=_max_length(config, tokenizer),
        identity=identity,
        chat=spec.chat,
    )
