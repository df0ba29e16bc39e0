"""Tiny real models for tests: a Llama built from a config, a small tokenizer, LoRA adapters made with peft."""

from __future__ import annotations

import string
from pathlib import Path

import torch

VOCAB = ["<pad>", "<s>", "</s>", "<unk>", " ", "\n", ":"] + list(string.ascii_letters + string.digits + ".,!?-'")


def make_tokenizer():
    """A character-level fast tokenizer, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(VOCAB)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def tiny_config(hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       tie_word_embeddings=True)


def make_tiny_llama(path: Path, seed: int = 0, **config_kwargs) -> Path:
    """Save a randomly initialised tiny Llama and its tokenizer as a Hugging Face folder."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**config_kwargs))
    path = Path(path)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def make_tiny_gemma3(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny Gemma 3 text model (Gemma 3 270M's shape in small: head_dim not hidden/heads,
    one KV head, sliding and full attention layers, tied embeddings) and the tiny tokenizer, as a folder."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=24, max_position_embeddings=256,
                              sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    model = Gemma3ForCausalLM(config)
    path = Path(path)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def make_lora(base_dir: Path, out_dir: Path, seed: int = 0, r: int = 4,
              target_modules: tuple[str, ...] = ("q_proj", "v_proj")) -> Path:
    """A PEFT LoRA folder on a tiny base, with non-zero B so it changes the outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules)))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.2)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def make_tiny_llama_gguf(path: Path, seed: int = 0) -> Path:
    """A tiny Llama as one float32 GGUF file that transformers loads (a byte-level BPE vocabulary in the file's
    metadata, as SmolLM2's GGUF has), for tests of the GGUF load path without the bundled 100 MB file."""
    import gguf
    import numpy as np

    hidden, layers, heads, kv_heads, ffn = 32, 2, 4, 2, 64
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    byte_level = {" ": "\u0120", "\n": "\u010a"}  # how GPT-2's byte alphabet spells a space and a newline
    tokens = specials + [byte_level.get(t, t) for t in VOCAB[4:]] + ["ab", "\u0120a"]
    rng = np.random.default_rng(seed)

    def weights(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_block_count(layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(["a b", "\u0120 a"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_tensor("token_embd.weight", weights(len(tokens), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    head_dim = hidden // heads
    for layer in range(layers):
        for name, shape in (("attn_q", (hidden, hidden)), ("attn_k", (kv_heads * head_dim, hidden)),
                            ("attn_v", (kv_heads * head_dim, hidden)), ("attn_output", (hidden, hidden)),
                            ("ffn_gate", (ffn, hidden)), ("ffn_up", (ffn, hidden)), ("ffn_down", (hidden, ffn))):
            writer.add_tensor(f"blk.{layer}.{name}.weight", weights(*shape))
        writer.add_tensor(f"blk.{layer}.attn_norm.weight", np.ones(hidden, np.float32))
        writer.add_tensor(f"blk.{layer}.ffn_norm.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
