"""Model specs, loading (folder, hub cache, GGUF), identity without loading, and load failures."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import types
import warnings
from pathlib import Path

import pytest
import torch

from calib_checks import models
from calib_checks.cache import cache_dir
from calib_checks.fileio import canonical_json
from calib_checks.models import (
    ModelLoadError,
    StaleRevisionWarning,
    attention_order,
    describe_identity,
    dtype_name,
    file_sha256,
    load_model,
    model_identity,
    parse_model_spec,
    resolve_device,
    resolve_dtype,
    software_stack,
)

PROBE = "Question: What is the answer?\nAnswer: A"


def _logits(loaded: models.LoadedModel, text: str = PROBE) -> torch.Tensor:
    ids = loaded.tokenizer(text, return_tensors="pt").input_ids.to(loaded.input_device)
    with torch.inference_mode():
        return loaded.model(input_ids=ids).logits.float()


# ---------------------------------------------------------------------------------------------- a tiny GGUF


def _llama_cpp_permute(weight, n_heads: int):
    """llama.cpp's q/k row order (transformers undoes it when reading a llama GGUF)."""
    return weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape
    )


def write_tiny_gguf(checkpoint: Path, out: Path) -> Path:
    """Write the tiny Llama checkpoint as an F32 llama GGUF (with its BPE tokenizer), as llama.cpp lays it out."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    config = json.loads((checkpoint / "config.json").read_text())
    tokenizer = json.loads((checkpoint / "tokenizer.json").read_text())
    writer = gguf.GGUFWriter(str(out), "llama")
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta") or config["rope_parameters"]["rope_theta"])
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3 = control, 1 = normal
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}  # fmt: skip
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for name, tensor in load_file(str(checkpoint / "model.safetensors")).items():
        value = tensor.float().numpy()
        if name in top:
            writer.add_tensor(top[name], np.ascontiguousarray(value))
            continue
        _, _, layer, rest = name.split(".", 3)
        if rest == "self_attn.q_proj.weight":
            value = _llama_cpp_permute(value, heads)
        elif rest == "self_attn.k_proj.weight":
            value = _llama_cpp_permute(value, kv_heads)
        writer.add_tensor(f"blk.{layer}.{per_layer[rest]}", np.ascontiguousarray(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tiny_model_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny-llama.Q0.gguf")


# ---------------------------------------------------------------------------------------------- specs


def test_parse_hub_ids_revisions_and_temperature() -> None:
    spec = parse_model_spec("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert (spec.source, spec.name, spec.revision, spec.temperature) == (
        "hub", "HuggingFaceTB/SmolLM2-135M-Instruct", None, 1.0)  # fmt: skip
    assert spec.label == "SmolLM2-135M-Instruct"

    spec = parse_model_spec("org/model-7b@v1.0:temperature=0.5")
    assert (spec.name, spec.revision, spec.temperature) == ("org/model-7b", "v1.0", 0.5)
    assert spec.label == "model-7b@v1.0@T0.5"

    assert parse_model_spec("gpt2", revision="abc123").revision == "abc123"
    assert parse_model_spec("gpt2@abc123", revision="abc123").revision == "abc123"
    assert parse_model_spec("gpt2:temperature=2").label == "gpt2@T2"
    assert parse_model_spec("  gpt2  ").name == "gpt2"


def test_parse_local_paths(tiny_model_dir: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_model_spec(str(tiny_model_dir))
    assert (spec.source, spec.name, spec.temperature) == ("folder", str(tiny_model_dir.resolve()), 1.0)
    assert spec.label == tiny_model_dir.name

    spec = parse_model_spec(f"{tiny_gguf}:temperature=0.25")
    assert (spec.source, spec.name, spec.temperature) == ("gguf", str(tiny_gguf.resolve()), 0.25)
    assert spec.label == "tiny-llama.Q0@T0.25"

    # A relative path that exists is a path, even though "a/b" also reads as a hub id.
    monkeypatch.chdir(tiny_model_dir.parent.parent)
    relative = f"{tiny_model_dir.parent.name}/{tiny_model_dir.name}"
    assert parse_model_spec(relative).source == "folder"


def test_labels_are_short_filesystem_safe_and_name_generic_folders(tmp_path: Path) -> None:
    for sub in ("runs/aligned/checkpoint-1000", "models--org--Some-Model/snapshots/" + "a" * 40, "odd name (v2)"):
        (tmp_path / sub).mkdir(parents=True)
    assert parse_model_spec(str(tmp_path / "runs/aligned/checkpoint-1000")).label == "aligned-checkpoint-1000"
    assert parse_model_spec(str(tmp_path / "models--org--Some-Model/snapshots" / ("a" * 40))).label == (
        "Some-Model@aaaaaaaaaaaa"
    )
    label = parse_model_spec(str(tmp_path / "odd name (v2)") + ":temperature=0.7").label
    assert label == "odd_name__v2_@T0.7"
    assert re.fullmatch(r"[A-Za-z0-9._@+-]{1,100}", label)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty model spec"),
        ("gpt2:temperature=0", "finite number > 0"),
        ("gpt2:temperature=-1", "finite number > 0"),
        ("gpt2:temperature=nan", "finite number > 0"),
        ("gpt2:temperature=inf", "finite number > 0"),
        ("gpt2:temperature=abc", "finite number > 0"),
        ("gpt2:temp=0.5", "unknown transform 'temp'"),
        ("gpt2:temperature=1:temperature=2", "temperature given twice"),
        (":temperature=0.5", "no model before the transform"),
        ("gpt2:", "unexpected ':'"),
        ("org/name@", "bad revision"),
        ("has space/model", "neither an existing path nor a hub id"),
        ("/no/such/checkpoint", "does not exist"),
        ("./missing.gguf", "GGUF file"),
    ],
)
def test_bad_specs_raise_one_clear_line(text: str, says: str) -> None:
    with pytest.raises(ModelLoadError) as info:
        parse_model_spec(text)
    message = str(info.value)
    assert says in message
    assert "\n" not in message
    if text:
        assert repr(text.strip()) in message


def test_revision_on_local_paths_and_conflicting_revisions_are_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="only to hub ids"):
        parse_model_spec(f"{tiny_model_dir}@v1")
    with pytest.raises(ModelLoadError, match="only to hub ids"):
        parse_model_spec(str(tiny_model_dir), revision="v1")
    with pytest.raises(ModelLoadError, match="revision given twice"):
        parse_model_spec("gpt2@a", revision="b")


def test_a_file_that_is_not_gguf_or_a_folder_is_refused(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file; pass a checkpoint folder"):
        parse_model_spec(str(weights))


# ---------------------------------------------------------------------------------------------- dtype / device


def test_dtype_and_device_resolution() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("float16") == torch.float16
    assert resolve_dtype(torch.float32) == torch.float32
    assert resolve_device("cpu") == "cpu"
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == expected_auto
    assert resolve_dtype("auto", "auto") == (torch.bfloat16 if expected_auto == "cuda" else torch.float32)
    with pytest.raises(ModelLoadError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("tpu-please")
    missing_gpu = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(ModelLoadError, match=re.escape(repr(missing_gpu))):
        resolve_device(missing_gpu)


# ---------------------------------------------------------------------------------------------- loading


def test_load_tiny_model_from_folder(tiny_model_dir: Path) -> None:
    loaded = load_model(f"{tiny_model_dir}:temperature=0.5", device="cpu", dtype="auto")
    assert loaded.label == f"{tiny_model_dir.name}@T0.5"
    assert loaded.temperature == 0.5
    assert loaded.dtype == torch.float32 and next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.input_device == torch.device("cpu")
    assert loaded.add_bos is False  # lm-eval adds BOS for Gemma only
    assert loaded.max_length == 512  # config.max_position_embeddings
    assert loaded.model.training is False
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.model.config._attn_implementation == "sdpa"
    assert loaded.identity == model_identity(f"{tiny_model_dir}:temperature=0.5", "auto", "cpu")
    assert torch.isfinite(_logits(loaded)).all()


def test_named_dtype_is_applied(tiny_model_dir: Path) -> None:
    loaded = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16 and next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.identity["dtype"] == "bfloat16"


def test_gemma_models_get_bos_as_in_lm_eval(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=128, sliding_window=64,
    )  # fmt: skip
    Gemma3ForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir / name, tmp_path / name)
    loaded = load_model(str(tmp_path), device="cpu")
    assert loaded.model.config.model_type == "gemma3_text"
    assert loaded.add_bos is True
    assert loaded.max_length == 128


# ---------------------------------------------------------------------------------------------- identity


def test_identity_needs_no_weights_and_tracks_temperature_dtype_and_content(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("model_identity must not load weights")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    base = model_identity(str(tiny_model_dir), "float32", "cpu")
    assert base == model_identity(str(tiny_model_dir), "float32", "cpu")
    assert set(base) == {"source", "name", "revision", "weights", "dtype", "temperature", "chat"}
    assert (base["source"], base["revision"], base["dtype"], base["temperature"], base["chat"]) == (
        "folder", None, "float32", 1.0, False)

    hot = model_identity(f"{tiny_model_dir}:temperature=0.5", "float32", "cpu")
    assert hot != base and {k for k in base if base[k] != hot[k]} == {"temperature"}
    assert model_identity(str(tiny_model_dir), "bfloat16", "cpu")["dtype"] == "bfloat16"

    # Same file sizes, different weights (a checkpoint retrained in place): a different identity.
    copy = shutil.copytree(tiny_model_dir, tmp_path / tiny_model_dir.name)
    assert model_identity(str(copy), "float32", "cpu")["weights"] == base["weights"]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy), "float32", "cpu")["weights"] != base["weights"]


def test_file_hash_is_remembered_by_path_inode_size_mtime_and_ctime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"a" * 1000)
    first = file_sha256(blob)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    (memo_path,) = (tmp_path / "cache" / "hashes").iterdir()
    memo = json.loads(memo_path.read_text())
    assert memo["sha256"] == first and memo["inode"] == blob.stat().st_ino
    # The memo is what a second call reads: make it lie and see it believed while the file is untouched.
    memo_path.write_text(json.dumps({**memo, "sha256": "remembered"}))
    assert file_sha256(blob) == "remembered"

    # Rewritten in place with the same size, mtime set back (as `cp --preserve` or a restore does): only the
    # ctime tells, and it is hashed again. ctime ticks with the kernel's coarse clock: wait for a new tick.
    before = blob.stat()
    blob.write_bytes(b"b" * 1000)
    for _ in range(100):
        os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
        if blob.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.01)
    after = blob.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns
    assert file_sha256(blob) == hashlib.sha256(b"b" * 1000).hexdigest()

    # Replaced by another file (a new inode) of the same size and mtime, its ctime made to match: hashed again.
    memo = json.loads(memo_path.read_text())
    replacement = tmp_path / "replacement.bin"
    replacement.write_bytes(b"c" * 1000)
    os.utime(replacement, ns=(after.st_atime_ns, after.st_mtime_ns))
    os.replace(replacement, blob)
    memo_path.write_text(json.dumps({**memo, "ctime_ns": blob.stat().st_ctime_ns}))
    assert blob.stat().st_ino != after.st_ino
    assert file_sha256(blob) == hashlib.sha256(b"c" * 1000).hexdigest()


# ---------------------------------------------------------------------------------------------- hub identity

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NEWER = "fedcba9876543210fedcba9876543210fedcba98"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fake_hf_cache(checkpoint: Path, hub: Path, repo_id: str, commit: str, ref: str | None = "main") -> list:
    """Lay `checkpoint` out as huggingface_hub does: `blobs/<etag>` (LFS sha256 for weights, git blob sha1
    otherwise), `snapshots/<commit>/<name>` linking to them, `refs/<ref>`; return the matching hub siblings."""
    from huggingface_hub.hf_api import BlobLfsInfo, RepoSibling

    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    siblings = []
    for path in sorted(checkpoint.iterdir()):
        data = path.read_bytes()
        lfs = path.suffix == ".safetensors"
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
        (repo / "blobs" / etag).write_bytes(data)
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", etag))
        pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + etag.encode()
        siblings.append(
            RepoSibling(
                rfilename=path.name,
                size=len(data),
                blob_id=_git_blob_sha1(pointer) if lfs else etag,  # an LFS file's git blob is its pointer
                lfs=BlobLfsInfo(size=len(data), sha256=etag, pointer_size=len(pointer)) if lfs else None,
            )
        )
    siblings.append(RepoSibling(rfilename="onnx/model.onnx", size=1, blob_id="0" * 40))  # not an identity file
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return siblings


class _FakeHub:
    """`HfApi.model_info` answering from a dict revision -> (commit, siblings), counting its calls."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict, error: Exception | None = None) -> None:
        import huggingface_hub

        self.answers, self.error, self.calls = answers, error, []

        def model_info(api, repo_id: str, revision: str | None = None, files_metadata: bool = False, **kwargs):
            self.calls.append((repo_id, revision))
            if self.error is not None:
                raise self.error
            assert files_metadata
            commit, siblings = self.answers[revision]
            return types.SimpleNamespace(id=repo_id, sha=commit, siblings=siblings)

        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


def _use_hub_cache(monkeypatch: pytest.MonkeyPatch, hub: Path, offline: bool) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_identity_of_a_hub_id_offline_comes_from_the_local_ref_with_a_warning_and_loads(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_hf_cache(tiny_model_dir, tmp_path / "hub", "acme/tiny-llama", COMMIT)
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=True)
    hub = _FakeHub(monkeypatch, {}, error=AssertionError("offline: the hub must not be asked"))

    with pytest.warns(StaleRevisionWarning) as caught:
        identity = model_identity("acme/tiny-llama", "float32", "cpu")
    (warning,) = caught
    message = str(warning.message)
    assert "'acme/tiny-llama'" in message and COMMIT in message and "could not be checked against the hub" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message
    assert identity["source"] == "hub" and identity["name"] == "acme/tiny-llama"
    assert identity["revision"] == COMMIT

    # A pinned full commit is checked against nothing: no warning, no hub call, the same identity.
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleRevisionWarning)
        assert model_identity(f"acme/tiny-llama@{COMMIT}", "float32", "cpu") == identity
        loaded = load_model(f"acme/tiny-llama@{COMMIT}", device="cpu")
    assert hub.calls == []
    assert loaded.label == "tiny-llama@0123456789ab" and loaded.identity == identity
    reference = load_model(str(tiny_model_dir), device="cpu")
    assert torch.equal(_logits(loaded), _logits(reference))
    with pytest.warns(StaleRevisionWarning):
        assert load_model("acme/tiny-llama", device="cpu").identity == identity


def test_one_commit_gives_one_identity_from_the_local_snapshot_or_the_hub(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    siblings = _fake_hf_cache(tiny_model_dir, tmp_path / "hub", "acme/tiny-llama", COMMIT)
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=False)
    hub = _FakeHub(monkeypatch, {None: (COMMIT, siblings), COMMIT: (COMMIT, siblings)})
    from_hub = model_identity("acme/tiny-llama", "float32", "cpu")
    assert hub.calls == [("acme/tiny-llama", None)]  # asked although the snapshot is local
    from_snapshot = model_identity(f"acme/tiny-llama@{COMMIT}", "float32", "cpu")
    assert hub.calls == [("acme/tiny-llama", None)]  # pinned and local: not asked
    assert from_snapshot == from_hub and from_hub["revision"] == COMMIT

    # The same commit, not downloaded: the hub's etags give the same fingerprint as the snapshot's blobs.
    shutil.rmtree(tmp_path / "hub")
    assert model_identity(f"acme/tiny-llama@{COMMIT}", "float32", "cpu") == from_hub
    assert hub.calls[-1] == ("acme/tiny-llama", COMMIT)

    # The identity names a full commit, never an abbreviation.
    _FakeHub(monkeypatch, {None: (COMMIT[:12], siblings)})
    with pytest.raises(ModelLoadError, match="not a full 40-hex commit sha"):
        model_identity("acme/tiny-llama")


def test_online_a_newer_commit_on_the_hub_wins_over_the_local_ref(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_hf_cache(tiny_model_dir, tmp_path / "hub", "acme/tiny-llama", COMMIT)
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=True)
    with pytest.warns(StaleRevisionWarning):
        old = model_identity("acme/tiny-llama", "float32", "cpu")

    # The aligned candidate was pushed again: new weights under a new commit, the local refs/main still old.
    retrained = shutil.copytree(tiny_model_dir, tmp_path / "retrained")
    data = bytearray((retrained / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (retrained / "model.safetensors").write_bytes(bytes(data))
    newer = _fake_hf_cache(retrained, tmp_path / "elsewhere", "acme/tiny-llama", NEWER)
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=False)
    _FakeHub(monkeypatch, {None: (NEWER, newer)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleRevisionWarning)
        identity = model_identity("acme/tiny-llama", "float32", "cpu")
    assert identity["revision"] == NEWER and identity["weights"] != old["weights"]
    assert (tmp_path / "hub" / "models--acme--tiny-llama" / "refs" / "main").read_text() == COMMIT


def test_an_unreachable_hub_falls_back_to_the_local_ref_but_a_missing_revision_does_not(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx2
    from huggingface_hub.errors import RevisionNotFoundError

    _fake_hf_cache(tiny_model_dir, tmp_path / "hub", "acme/tiny-llama", COMMIT)
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=False)
    _FakeHub(monkeypatch, {}, error=httpx2.ConnectError("[Errno -3] Temporary failure in name resolution"))
    with pytest.warns(StaleRevisionWarning, match=r"could not be checked against the hub \(the hub could not be"):
        assert model_identity("acme/tiny-llama", "float32", "cpu")["revision"] == COMMIT
    with pytest.raises(ModelLoadError, match="cannot reach acme/other on the Hugging Face hub"):
        model_identity("acme/other")

    request = httpx2.Request("GET", "https://huggingface.co/api/models/acme/tiny-llama/revision/main")
    response = httpx2.Response(404, request=request)
    missing = RevisionNotFoundError("404 Client Error: revision main not found", response=response)
    _FakeHub(monkeypatch, {}, error=missing)
    with pytest.raises(ModelLoadError) as info:
        model_identity("acme/tiny-llama")
    assert "the Hugging Face hub has no acme/tiny-llama" in str(info.value) and "\n" not in str(info.value)


def test_a_snapshot_that_is_not_linked_to_blobs_is_refused(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / COMMIT)  # plain copies: no etags to read
    _use_hub_cache(monkeypatch, tmp_path / "hub", offline=True)
    with pytest.raises(ModelLoadError, match="is not a link to its blob"):
        model_identity(f"acme/tiny-llama@{COMMIT}")


def test_describe_identity_is_one_short_line(tiny_model_dir: Path) -> None:
    hub = {"source": "hub", "name": "HuggingFaceTB/SmolLM2-135M", "revision": COMMIT, "weights": "ab" * 32,
           "dtype": "float32", "temperature": 1.0}  # fmt: skip
    assert describe_identity(hub) == "HuggingFaceTB/SmolLM2-135M@0123456789ab in float32"
    hot = describe_identity({**hub, "temperature": 0.5, "dtype": "bfloat16"})
    assert hot == "HuggingFaceTB/SmolLM2-135M@0123456789ab at temperature 0.5 in bfloat16"
    folder = model_identity(str(tiny_model_dir), "float32", "cpu")
    assert describe_identity(folder) == (f"folder {tiny_model_dir.resolve()} (weights {folder['weights'][:12]}) "
                                         "in float32")
    assert describe_identity({"name": "base"}) == "base"  # an identity read back from an older file


def test_software_stack_names_versions_device_and_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    import tokenizers
    import transformers

    import calib_checks

    stack = software_stack("cpu")
    assert stack == {
        "calib_checks": calib_checks.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "device": "cpu",
        "attention": ["sdpa", "eager"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2 and AVX-512 scores differ by ~1e-6
    }
    assert software_stack("auto")["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch, "__version__", "9.9.9+cpu")
    assert software_stack("cpu") == {**stack, "torch": "9.9.9+cpu"}
    monkeypatch.setattr(models, "resolve_device", lambda device: "cuda:0")  # as on a machine with a GPU
    assert software_stack("cuda:0", "flex")["attention"] == ["flex_attention"]  # another stack: other cache keys
    assert software_stack("cuda:0", "dense")["attention"] == ["sdpa", "eager"]
    assert "cpu_capability" not in software_stack("cuda:0", "dense")
    monkeypatch.setattr(models, "resolve_device", lambda device: device)
    other = "AVX512" if stack["cpu_capability"] == "AVX2" else "AVX2"  # the same cache, another kind of CPU
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert software_stack("cpu") == {**stack, "torch": "9.9.9+cpu", "cpu_capability": other}


def test_attention_order_prefers_flex_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert attention_order("cpu") == attention_order("cpu", "dense") == ("sdpa", "eager")
    with pytest.raises(ModelLoadError, match=r"unknown attention 'fast'; use one of auto, flex, dense"):
        attention_order("cpu", "fast")
    # torch's compiled CPU flex kernel is wrong with AVX2 code (models.attention_order): refused on CPU, one line.
    with pytest.raises(ModelLoadError, match=r"attention 'flex' runs on CUDA only \(device 'cpu' here\).*'dense'"):
        attention_order("cpu", "flex")
    monkeypatch.setattr(models, "resolve_device", lambda device: "cuda:0")  # as on a machine with a GPU
    assert attention_order("auto") == ("flex_attention", "sdpa", "eager")
    assert attention_order("auto", "dense") == ("sdpa", "eager")
    assert attention_order("cuda:0", "flex") == ("flex_attention",)


# ---------------------------------------------------------------------------------------------- failures


def test_unreachable_hub_id_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for call in (lambda: model_identity("acme/not-downloaded"), lambda: load_model("acme/not-downloaded")):
        with pytest.raises(ModelLoadError) as info:
            call()
        message = str(info.value)
        assert "'acme/not-downloaded'" in message and "offline" in message and "local folder" in message
        assert "\n" not in message


def test_missing_folder_and_folder_without_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "ckpt")
    spec = parse_model_spec(str(folder))
    shutil.rmtree(folder)  # deleted after the spec was parsed
    with pytest.raises(ModelLoadError, match="does not exist: check the path"):
        load_model(spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_corrupt_weights_and_garbage_gguf_raise_model_load_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(folder), device="cpu")
    assert str(info.value).startswith(f"model '{folder}' failed to load (") and "\n" not in str(info.value)

    garbage = tmp_path / "weights.gguf"
    garbage.write_bytes(b"this is not a gguf file" * 10)
    for call in (lambda: model_identity(str(garbage)), lambda: load_model(str(garbage))):
        with pytest.raises(ModelLoadError, match="is not a GGUF file"):
            call()

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)
    with pytest.raises(ModelLoadError, match="cannot read GGUF file"):
        load_model(str(truncated), device="cpu")


# ---------------------------------------------------------------------------------------------- GGUF


def test_gguf_is_converted_once_and_then_served_from_the_safetensors_cache(
    tiny_gguf: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    converted = tmp_path / "cache" / "models" / file_sha256(tiny_gguf)

    first = load_model(str(tiny_gguf), device="cpu")
    assert (converted / "calib_checks_gguf.json").is_file()
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    assert Path(first.model.name_or_path) == converted
    assert not [p for p in converted.parent.iterdir() if p.name.startswith(".tmp")]
    # The GGUF holds the tiny model's weights in llama.cpp's layout: the round trip is exact.
    assert torch.equal(_logits(first), _logits(load_model(str(tiny_model_dir), device="cpu")))

    def refuse(*args, **kwargs):
        raise AssertionError("a cached GGUF must not be converted again")

    monkeypatch.setattr(models, "_convert_gguf", refuse)
    second = load_model(f"{tiny_gguf}:temperature=0.5", device="cpu")
    assert Path(second.model.name_or_path) == converted
    assert torch.equal(_logits(first), _logits(second))  # the temperature is the scorer's to apply
    assert second.identity["weights"] == first.identity["weights"] == file_sha256(tiny_gguf)


def _load_gguf_in_child(gguf_path: str, cache: str, counter: str) -> list[float]:
    import os

    os.environ["CALIB_CHECKS_CACHE"] = cache
    convert = models._convert_gguf

    def counting(spec, out):
        with open(counter, "a") as handle:
            handle.write("converted\n")
        time.sleep(0.5)  # widen the window in which the other process arrives
        convert(spec, out)

    models._convert_gguf = counting
    return _logits(load_model(gguf_path, device="cpu"))[0, -1].tolist()


@pytest.mark.slow
def test_concurrent_gguf_loads_convert_once(tiny_gguf: Path, tmp_path: Path) -> None:
    counter = tmp_path / "conversions.txt"
    args = (str(tiny_gguf), str(tmp_path / "cache"), str(counter))
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.starmap(_load_gguf_in_child, [args, args])
    assert counter.read_text().count("converted") == 1
    assert results[0] == results[1]
    models_dir = tmp_path / "cache" / "models"
    assert sorted(p.name for p in models_dir.iterdir() if not p.name.endswith(".lock")) == [file_sha256(tiny_gguf)]


@pytest.mark.slow
def test_smollm2_gguf_loads_and_second_load_uses_the_cache(
    smollm2_path: Path, smollm2_model: models.LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted = cache_dir() / "models" / file_sha256(smollm2_path)
    assert (converted / "calib_checks_gguf.json").is_file()
    assert Path(smollm2_model.model.name_or_path) == converted
    assert type(smollm2_model.model).__name__ == "LlamaForCausalLM"
    assert smollm2_model.label == "SmolLM2-135M-Instruct.Q4_1"
    assert smollm2_model.add_bos is False and smollm2_model.max_length == 8192
    assert smollm2_model.tokenizer.convert_ids_to_tokens(smollm2_model.tokenizer(" A").input_ids) == ["ĠA"]

    def refuse(*args, **kwargs):
        raise AssertionError("a cached GGUF must not be converted again")

    monkeypatch.setattr(models, "_convert_gguf", refuse)
    started = time.perf_counter()
    again = load_model(str(smollm2_path), device="cpu", dtype="float32")
    seconds = time.perf_counter() - started
    print(f"SmolLM2 load from the safetensors cache: {seconds:.2f} s")
    assert Path(again.model.name_or_path) == converted
    assert torch.equal(_logits(again), _logits(smollm2_model))


def test_dtype_transform_is_part_of_identity_and_label(tiny_model_dir: Path) -> None:
    plain = parse_model_spec(str(tiny_model_dir))
    half = parse_model_spec(f"{tiny_model_dir}:dtype=bfloat16")
    both = parse_model_spec(f"{tiny_model_dir}:temperature=0.5:dtype=float32")
    assert (half.dtype, half.label) == ("bfloat16", plain.label + "@bf16")
    assert (both.dtype, both.temperature) == ("float32", 0.5)
    # The spec's dtype wins over the run's: the same weights in two precisions are two identities.
    assert model_identity(half, "float32", "cpu")["dtype"] == "bfloat16"
    assert model_identity(half, "float32", "cpu") != model_identity(plain, "float32", "cpu")
    lm = load_model(half, device="cpu", dtype="float32")
    assert str(lm.dtype) == "torch.bfloat16" and lm.identity["dtype"] == "bfloat16"
    for bad, match in ((":dtype=fp8", "not one of float32, bfloat16, float16, bfloat16-weights"),
                       (":dtype=float32:dtype=float16",
                                                                                 "dtype given twice")):
        with pytest.raises(ModelLoadError, match=match):
            parse_model_spec(f"{tiny_model_dir}{bad}")


def test_bf16_rounded_weights_are_their_own_identity_and_compute_in_float32(tiny_model_dir: Path) -> None:
    """`:dtype=bfloat16-weights`: every parameter rounded to bf16 (what a bf16 checkpoint holds), float32
    arithmetic; never the same identity, label or scores as float32 or bfloat16."""
    plain = parse_model_spec(str(tiny_model_dir))
    rounded = parse_model_spec(f"{tiny_model_dir}:dtype=bfloat16-weights")
    assert (rounded.dtype, rounded.label) == ("bfloat16-weights", plain.label + "@bf16-weights")
    assert resolve_dtype("bfloat16-weights") == torch.float32 and dtype_name("bf16-weights") == "bfloat16-weights"
    identity = model_identity(rounded, "float32", "cpu")
    assert identity["dtype"] == "bfloat16-weights"
    assert describe_identity(identity).endswith("with bfloat16-rounded weights in float32 arithmetic")
    assert len({canonical_json(model_identity(f"{tiny_model_dir}:dtype={d}", "auto", "cpu"))
                for d in ("float32", "bfloat16", "bfloat16-weights")}) == 3
    lm = load_model(rounded, device="cpu")
    full = load_model(plain, device="cpu", dtype="float32")
    assert lm.dtype == torch.float32 and lm.identity == identity
    changed = 0
    for (name, weight), (_, original) in zip(lm.model.named_parameters(), full.model.named_parameters()):
        assert weight.dtype == torch.float32, name
        assert torch.equal(weight, original.to(torch.bfloat16).float()), name  # round to nearest even
        changed += not torch.equal(weight, original)
    assert changed > 0


def test_chat_transform_is_part_of_identity_and_needs_a_template(tiny_model_dir: Path) -> None:
    plain, chat = parse_model_spec(str(tiny_model_dir)), parse_model_spec(f"{tiny_model_dir}:chat")
    assert (chat.chat, chat.label) == (True, plain.label + "@chat") and not plain.chat
    both = parse_model_spec(f"{tiny_model_dir}:temperature=0.5:chat")
    assert both.chat and both.temperature == 0.5
    assert model_identity(chat, "float32", "cpu")["chat"] is True
    assert model_identity(chat, "float32", "cpu") != model_identity(plain, "float32", "cpu")
    assert describe_identity(model_identity(chat, "float32", "cpu")).endswith("through its chat template")
    with pytest.raises(ModelLoadError, match="chat given twice"):
        parse_model_spec(f"{tiny_model_dir}:chat:chat")
    # The tiny tokenizer ships no chat template: asking for one is a clear load error, not plain prompts.
    with pytest.raises(ModelLoadError, match="has no chat template.*drop ':chat'"):
        load_model(chat, device="cpu", dtype="float32")
