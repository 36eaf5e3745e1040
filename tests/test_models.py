"""Model specs, loading (folder, hub cache, GGUF), identity without loading, and load failures."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from calib_checks import models
from calib_checks.cache import cache_dir
from calib_checks.models import (
    ModelLoadError,
    file_sha256,
    load_model,
    model_identity,
    parse_model_spec,
    resolve_device,
    resolve_dtype,
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
    assert set(base) == {"source", "name", "revision", "weights", "dtype", "temperature"}
    assert (base["source"], base["revision"], base["dtype"], base["temperature"]) == ("folder", None, "float32", 1.0)

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


def test_file_hash_is_remembered_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIB_CHECKS_CACHE", str(tmp_path / "cache"))
    blob = tmp_path / "blob.bin"
    blob.write_bytes(b"a" * 1000)
    first = file_sha256(blob)
    assert first == __import__("hashlib").sha256(b"a" * 1000).hexdigest()
    memos = list((tmp_path / "cache" / "hashes").iterdir())
    assert len(memos) == 1 and json.loads(memos[0].read_text())["sha256"] == first
    # The memo is what a second call reads: make it lie and see it believed while size and mtime match.
    memo = json.loads(memos[0].read_text())
    memos[0].write_text(json.dumps({**memo, "sha256": "remembered"}))
    assert file_sha256(blob) == "remembered"
    blob.write_bytes(b"b" * 1001)  # new size (and mtime): hashed again
    assert file_sha256(blob) == __import__("hashlib").sha256(b"b" * 1001).hexdigest()


def test_identity_of_a_hub_id_comes_from_the_local_hf_cache_and_loads_offline(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    identity = model_identity("acme/tiny-llama", "float32", "cpu")
    assert identity["source"] == "hub" and identity["name"] == "acme/tiny-llama"
    assert identity["revision"] == commit
    assert identity["weights"] == model_identity(str(tiny_model_dir), "float32", "cpu")["weights"]
    assert model_identity(f"acme/tiny-llama@{commit}", "float32", "cpu")["revision"] == commit

    loaded = load_model("acme/tiny-llama", device="cpu")
    assert loaded.label == "tiny-llama"
    reference = load_model(str(tiny_model_dir), device="cpu")
    assert torch.equal(_logits(loaded), _logits(reference))


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
