"""Build a tiny causal LM and its tokenizer offline (no hub access).

The tokenizer is character level over printable ASCII plus ChatML specials, so
any token sequence decodes to text that encodes back to the same tokens: the
pairs a tiny run writes as text are exactly the tokens vLLM sampled. The model
is a Llama-architecture decoder (as in the paper; transformers forces its own
byte-level tokenizer on Qwen2 directories) with head_dim 64 (the vLLM CPU attention
kernel rejects smaller heads). Its input embeddings share one direction, as trained LMs'
hidden states do (anisotropy); a purely random init has none, and then a preference over
the response alone (oracle.synthetic=vowels: a per-token bias would do) is learned pair by
pair instead of as a direction that carries to prompts the learner never saw: in a replay
of the quickstart's first learn stage the held-out excess removed went from 39% to 62%.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
HEAD_DIM = 64


def build_tokenizer():
    """A character-level fast tokenizer with a ChatML chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.printable[:-2])  # printable ASCII, without \x0b \x0c
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    # Every character alone, newlines included ("." skips "\n": "\n\n" became unknown).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = 4096
    return tok


def _prepare(
    out: str | Path,
    *,
    layers: int,
    hidden: int,
    tied_embeddings: bool = False,
    intermediate: int | None = None,
    max_positions: int = 1024,
    **extra,
):
    """Check the shape, create ``out`` and build the tokenizer and Llama config of a tiny model."""
    from transformers import LlamaConfig

    if hidden % HEAD_DIM:
        raise ValueError(f"hidden must be a multiple of {HEAD_DIM}, got hidden={hidden}")
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got layers={layers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    heads = hidden // HEAD_DIM
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate or 3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tied_embeddings,
        bos_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
        **extra,
    )
    return out, tok, config


def build_tiny_model(
    out: str | Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    tied_embeddings: bool = False,
    intermediate: int | None = None,
    max_positions: int = 1024,
    seed: int = 0,
    **config: object,
) -> Path:
    """Write a randomly initialised tiny model + tokenizer to ``out`` and return it;
    ``config`` adds LlamaConfig fields (attention_dropout=0.1, ...)."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    out, tok, llama = _prepare(
        out,
        layers=layers,
        hidden=hidden,
        tied_embeddings=tied_embeddings,
        intermediate=intermediate,
        max_positions=max_positions,
        **config,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama).float()
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        shared = torch.randn(emb.shape[1])
        emb += emb.norm(dim=1).mean() * shared / shared.norm()
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "inpo_tiny.json").write_text(
        json.dumps({"layers": layers, "hidden": hidden, "tied_embeddings": tied_embeddings})
    )
    return out


def build_tiny_reward_model(
    out: str | Path, *, layers: int = 2, hidden: int = 64, seed: int = 0
) -> Path:
    """Write a randomly initialised tiny Bradley-Terry reward model (sequence classification,
    one label) + tokenizer to ``out`` and return it; the oracle's reward backend loads it."""
    import torch
    from transformers import LlamaForSequenceClassification

    out, tok, config = _prepare(out, layers=layers, hidden=hidden, num_labels=1)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).float().save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def count_parameters(model_dir: str | Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                total += _prod(sf.get_slice(k).get_shape())
    return total


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
