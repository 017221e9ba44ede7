"""The lm-evaluation-harness model `infini_pythia`: a run directory or checkpoint of infini-bench.

    lm_eval --model infini_pythia --model_args pretrained=runs/core/single-memory --tasks ...

model_args: pretrained (run dir or checkpoint), segment_len and memory_scope (override the
checkpoint's), device (auto | cpu | cuda), dtype (float32 | bfloat16 | float16), batch_size,
max_gen_toks. Scoring uses `infini_bench.evaluation`, the code the suite's leaderboard uses.
Infini models read every input through their memory, segment by segment, with no length
window: a document of any length is scored whole. The Pythia baseline (a GPT-NeoX checkpoint)
is scored in windows of its max_position_embeddings, as lm-eval does for any HF model.
"""

import logging

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from . import models  # noqa: F401  (registers infini_pythia with the Auto classes)
from .data.tokenizer import encode_long
from .evaluation import encode_request, greedy_generate, score_tokens
from .device import pick_device

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InfiniPythiaLM(TemplateLM):
    def __init__(self, pretrained: str, segment_len: int | None = None, memory_scope: str | None = None,
                 device: str | None = "auto", dtype: str = "float32", batch_size: int | str = 8,
                 max_gen_toks: int = 256, **kwargs):
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
        config = AutoConfig.from_pretrained(pretrained)
        overrides = {k: v for k, v in (("segment_len", segment_len), ("memory_scope", memory_scope)) if v is not None}
        if overrides and config.model_type != "infini_pythia":
            raise ValueError(f"{next(iter(overrides))}: only for Infini models; {pretrained} is a "
                             f"{config.model_type} checkpoint")
        if overrides:
            config = AutoConfig.from_pretrained(pretrained, **overrides)
            config.check()  # from_pretrained sets overrides after the config validated itself
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("device %s unavailable (lm_eval's default is cuda); using the CPU", device)
            device = "cpu"
        self._device = pick_device(device or "auto") if device in (None, "auto", "cpu", "cuda") \
            else torch.device(device)
        try:
            self.model = AutoModelForCausalLM.from_pretrained(pretrained, config=config, dtype=DTYPES[dtype])
        except Exception as error:  # noqa: BLE001 - a checkpoint that cannot be read, whatever the reason
            raise ValueError(f"pretrained: {pretrained} cannot be loaded, truncated or corrupted? "
                             f"({error.__class__.__name__})") from None
        self.model.to(self._device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        if len(self.tokenizer) > self.model.config.vocab_size:
            raise ValueError(f"tokenizer: {len(self.tokenizer)} tokens do not fit the checkpoint's vocab_size "
                             f"{self.model.config.vocab_size}; use the tokenizer saved with the checkpoint")
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.infini = hasattr(self.model, "empty_memory")
        self.pretrained = pretrained

    @property
    def device(self):
        return self._device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int | None:
        """Longest input scored in one piece: none for Infini models (memory), else the model's."""
        return None if self.infini else self.model.config.max_position_embeddings

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        if add_special_tokens:
            return self.tokenizer(string, add_special_tokens=True)["input_ids"]
        return encode_long(self.tokenizer, string)  # flat memory for million-token documents

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """The pair split exactly where the context's encoding ends (`evaluation.encode_request`),
        without lm-eval's default of moving the context's trailing whitespace into the
        continuation: the infini_bench tasks build contexts from decoded tokens, where a trailing
        space is one of the context's tokens (a bare-space token before a rare word), so the
        default would score one token more than the leaderboard does."""
        whole, start = encode_request(self.tokenizer, context, continuation)
        return whole[:start], whole[start:]

    def _score(self, rows, disable_tqdm=True):
        results = []
        batch = max(self.batch_size * 16, 64)  # progress in steps; score_tokens batches inside
        for start in tqdm(range(0, len(rows), batch), disable=disable_tqdm, desc="scoring"):
            results += score_tokens(self.model, rows[start:start + batch], self.batch_size, self.device)
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        rows, cut = [], 0
        for _, context, continuation in requests:
            whole = context + continuation
            if self.max_length is not None and len(whole) > self.max_length:
                whole = whole[-self.max_length:]  # GPT-NeoX: keep the end, as lm-eval's HF model does
                cut += 1
            rows.append((whole, len(whole) - len(continuation)))
        if cut:
            log.warning("%d of %d requests are longer than the model's context (%d tokens) and were cut to "
                        "their last %d tokens", cut, len(requests), self.max_length, self.max_length)
        out = []
        for (lp, greedy), request in zip(self._score(rows, disable_tqdm), requests):
            result = (float(lp.sum()), bool(greedy.all()))
            self.cache_hook.add_partial("loglikelihood", request[0], result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        rows, owners = [], []
        for index, request in enumerate(requests):
            tokens = self.tok_encode(request.args[0])
            if self.infini:  # the whole document through the memory
                rows.append(([self.eot_token_id] + tokens, 1))
                owners.append(index)
                continue
            for context, predicted in map(make_disjoint_window, get_rolling_token_windows(
                    tokens, self.eot_token_id, self.max_length, context_len=1)):
                rows.append((context + predicted, len(context)))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (lp, _) in zip(owners, self._score(rows, disable_tqdm)):
            totals[owner] += float(lp.sum())
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generating"):
            context, gen_kwargs = request.args
            until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
            eot = self.eot_token_id

            def stop(new):
                return new[-1] == eot or any(s in self.tok_decode(new) for s in until)

            new = greedy_generate(self.model, self.tok_encode(context) or [eot], max_new, stop, self.device)
            text = self.tok_decode([t for t in new if t != eot])
            for s in until:
                text = text.split(s)[0]
            self.cache_hook.add_partial("generate_until", request.args, text)
            out.append(text)
        return out
