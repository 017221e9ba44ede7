"""Random streams by purpose: every stream is seeded from (suite seed, purpose, stage, split).

A stable hash (SHA-256, not Python's salted `hash`) of the four gives each stream its own seed,
so streams of different purposes, curriculum stages or splits never fall into step (the same
seed for two generators of different lengths would make one's documents prefixes of the
other's), and a stream is the same on every machine. The purposes in use are listed here.
"""

import hashlib
import json
import random

CORPUS = "corpus"                  # embedded-corpus documents (stage: sample length; split)
CORPUS_OFFSET = "corpus-offset"    # where the first sample of a split's token stream starts
DOCUMENT_SPLIT = "document-split"  # which split each document of a text source goes to
RETRIEVAL_TRAIN = "passkey-samples"  # retrieval documents mixed into the samples (stage; split)
NEEDLE_EVAL = "needle-eval"        # the retrieval grid and the infini_niah / infini_vt tasks
NEEDLE_SELECT = "needle-select"    # validation documents that choose the shared first stage
FIRST_STAGE_TRIAL = "first-stage-trial"  # which second-stage samples a first-stage candidate is tried on
FILLER = "filler"                  # haystack sentence pools (stage: haystack kind; split)
REVERSAL_FACTS = "reversal-facts"  # invented reversal facts
REVERSAL_ORDER = "reversal-order"  # order of the repeated fact sentences in training
DISTRACTORS = "distractors"        # wrong answers of each reversal question
LONG_DOCUMENT = "long-document"    # the long-document PPL text
TOKENIZER = "tokenizer"            # extra tokenizer training text (needles), training split only
BOOTSTRAP = "bootstrap"            # resampling in the leaderboard's intervals


def stream_seed(seed: int, purpose: str, stage=None, split=None) -> int:
    """A 63-bit seed for one stream, the same for the same four values on every machine."""
    key = json.dumps([seed, purpose, stage, split]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") >> 1


def stream_rng(seed: int, purpose: str, stage=None, split=None) -> random.Random:
    return random.Random(stream_seed(seed, purpose, stage, split))
