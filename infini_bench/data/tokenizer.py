"""Tokenizers: Pythia's GPT-NeoX-20B tokenizer when reachable, else one trained offline."""

import functools
import hashlib
import logging
import socket
from pathlib import Path
from urllib.parse import urlparse

from huggingface_hub import constants
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ..io import atomic_dir

PYTHIA_TOKENIZER = "EleutherAI/gpt-neox-20b"
EOS = "<|endoftext|>"
log = logging.getLogger(__name__)


def train_bpe_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE (the same family as GPT-NeoX's) trained with `tokenizers` on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, unk_token=EOS,
                                   pad_token=EOS)


@functools.cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the model hub can be reached: offline mode is off and its host answers quickly
    (without this check, every hub call retries for most of a minute on a machine without network)."""
    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_tokenizer(spec: str, texts=None, vocab_size: int | None = None, cache_dir: Path | None = None):
    """Tokenizer for `spec` and a description of what was used.

    spec: "pythia" (the hub's GPT-NeoX-20B tokenizer, trained BPE when unreachable), "bpe"
    (always train on `texts`), or a hub name / local path for `AutoTokenizer`.
    """
    if spec != "bpe":
        name = PYTHIA_TOKENIZER if spec == "pythia" else spec
        try:
            local = Path(name).exists() or not hub_reachable()
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        except (OSError, ValueError) as error:
            if spec != "pythia":
                raise ValueError(f"tokenizer: cannot load {spec!r} ({error.__class__.__name__})") from None
            log.warning("Pythia tokenizer %s unreachable; training a BPE tokenizer offline", name)
        else:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer, name
    if texts is None:
        raise ValueError("tokenizer: a trained BPE tokenizer needs training texts")
    texts = list(texts)
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"bpe-{vocab_size}-{digest}" if cache_dir else None
    if path is not None and (path / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(path), f"bpe-{vocab_size}"
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    if path is None:
        return tokenizer, f"bpe-{vocab_size}"
    with atomic_dir(path) as tmp:
        tokenizer.save_pretrained(tmp)
    # Loaded back, so that a tokenizer trained now is the same object as one found in the cache
    # (name_or_path included, which the data's description records: a sweep's driver that trains
    # it and its trials that load it must describe, and so fingerprint, the same stages).
    return PreTrainedTokenizerFast.from_pretrained(path), f"bpe-{vocab_size}"


def tokenizer_fingerprint(tokenizer) -> str:
    """Stable id of a tokenizer's vocabulary and rules (for cache keys)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def encode_long(tokenizer, text: str, piece_chars: int = 100_000) -> list[int]:
    """Token ids of `text` (no special tokens), encoded in pieces of about `piece_chars`
    characters cut just before a space. A fast tokenizer holds per-character alignments for its
    whole input (about 150 bytes per character: 0.7 GB for a 1M-token text); pieces keep that
    flat. With a byte-level pre-tokenizer (GPT-NeoX's, and the BPE trained here) a word starts
    at its leading space, so the pieces' tokens are the whole text's tokens."""
    ids, start = [], 0
    while start < len(text):
        end = len(text) if len(text) - start <= piece_chars else text.rfind(" ", start + 1, start + piece_chars)
        end = end if end > start else min(len(text), start + piece_chars)
        ids += tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return ids
