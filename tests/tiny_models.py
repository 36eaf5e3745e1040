"""Tiny, randomly initialised causal LMs built in the tests: real forward passes, seconds to build.

A byte-level BPE tokenizer is trained with the `tokenizers` package on a small corpus (so " A".." E" are
single tokens, like real byte-level BPE vocabularies), and a 2-layer Llama is saved with safetensors. The
weights are random but seeded, so two builds with the same seed are the same model.
"""

from __future__ import annotations

from pathlib import Path

_CORPUS = [
    "Question: What is the answer?\nAnswer: A B C D E",
    "The following are multiple choice questions (with answers) about science.",
    " A. B. C. D. E. Choices: Answer: Question:",
    "the sun is a star. water boils at one hundred degrees. plants need light to grow.",
    "a dog, a cat and a bird went to the park; they played with a ball and ran home.",
    "heat, ice, rock, metal, wood, glass, paper, energy, force, motion, gravity, cell",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 x ^ kg m s",
]


def build_tiny_model(path: str | Path, seed: int = 0, vocab_size: int = 384, head_dim: int = 8) -> Path:
    """Build and save a tiny Llama checkpoint with its tokenizer at `path`; return the path. 4 heads of
    `head_dim` dimensions (CUDA's flex-attention kernel needs at least 16)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(path)

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=head_dim,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Random init gives near-uniform logits; a larger output scale makes options distinguishable and
    # the model over- or under-confident, which the calibration tests need.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.save_pretrained(path, safe_serialization=True)
    return path
