"""Infini-Pythia: GPT-NeoX (Pythia) whose `infini_layers` carry a compressive memory.

An input longer than `segment_len` is cut into segments; every layer processes all segments
of the call at once (positions restart in each segment), and an Infini layer carries its
memory from one segment to the next. Layers that are not Infini layers are transformers' own
`GPTNeoXLayer`; `memory_type="none"` is transformers' `GPTNeoXForCausalLM` (see `build_model`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, GPTNeoXForCausalLM, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import CausalLMOutput
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXLayer, GPTNeoXMLP, GPTNeoXRotaryEmbedding

from .configuration_infini_pythia import InfiniPythiaConfig
from .memory import MemoryState, infini_attention, update_memory

MemoryStates = tuple[MemoryState, ...]  # one per Infini layer, in layer order


@dataclass
class InfiniPythiaOutput(CausalLMOutput):
    """`CausalLMOutput` plus the memory after this call, to pass as `memory_state` to the next."""

    memory_state: MemoryStates | None = None


class InfiniAttention(nn.Module):
    """Memory-only Infini-attention (no softmax attention, no position encoding)."""

    def __init__(self, config: InfiniPythiaConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.gate = nn.Parameter(torch.zeros(self.num_heads))
        # delta_l2's write strength beta_t = sigmoid(w_h . x_t) per head, as DeltaNet's b_proj.
        self.write_strength = (nn.Linear(config.hidden_size, self.num_heads, bias=False)
                               if config.memory_rule == "delta_l2" else None)
        self.expansion_gate = None
        if config.memory_type == "hierarchical":
            self.expansion_gate = nn.Sequential(
                nn.Linear(config.hidden_size, config.hidden_size // 4), nn.ReLU(),
                nn.Linear(config.hidden_size // 4, 1))

    def expansion_probability(self, coarse: torch.Tensor) -> torch.Tensor:
        """p from the coarse read [B, H, S, d] (heads merged) -> [B, 1, S, 1]."""
        b, h, s, d = coarse.shape
        merged = coarse.transpose(1, 2).reshape(b, s, h * d).to(self.expansion_gate[0].weight.dtype)
        return torch.sigmoid(self.expansion_gate(merged)).to(coarse.dtype).view(b, 1, s, 1)

    def _qkv(self, hidden: torch.Tensor):
        """q, k, v [B, H, T, S, d] of hidden [B, T, S, hidden], in fp32 (fp64 stays fp64): the
        memory math runs in full precision, also under bf16 autocast; beta [B, H, T, S] for
        delta_l2, else None."""
        b, t, s, _ = hidden.shape
        qkv = self.query_key_value(hidden).view(b, t, s, self.num_heads, 3 * self.head_dim)
        compute_dtype = torch.promote_types(qkv.dtype, torch.float32)
        q, k, v = qkv.permute(0, 3, 1, 2, 4).to(compute_dtype).chunk(3, dim=-1)
        beta = None
        if self.write_strength is not None:
            beta = torch.sigmoid(self.write_strength(hidden).permute(0, 3, 1, 2).to(compute_dtype))
        return q, k, v, beta

    def forward(self, hidden: torch.Tensor, state: MemoryState, valid: torch.Tensor | None):
        """hidden: [B, T, S, hidden] -> ([B, T, S, hidden], state after the T segments)."""
        b, t, s, _ = hidden.shape
        q, k, v, beta = self._qkv(hidden)
        c = self.config
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            out, state = infini_attention(
                q, k, v, state.to(dtype=q.dtype), self.gate.to(q.dtype),
                delta_rule=c.use_delta_rule, stream_update=c.stream_update,
                expansion_gate=self.expansion_probability if self.expansion_gate is not None else None,
                valid=valid, bptt_segments=c.bptt_segments, rule=c.memory_rule, beta=beta)
        out = out.permute(0, 2, 3, 1, 4).reshape(b, t, s, -1).to(hidden.dtype)
        return self.dense(out), state

    def update_memory(self, hidden: torch.Tensor, state: MemoryState, valid: torch.Tensor | None) -> MemoryState:
        """The state after writing hidden [B, T, S, hidden], nothing read (no queries needed)."""
        _, k, v, beta = self._qkv(hidden)
        c = self.config
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return update_memory(k, v, state.to(dtype=k.dtype), delta_rule=c.use_delta_rule,
                                 stream_update=c.stream_update, valid=valid, rule=c.memory_rule, beta=beta)


class InfiniLayer(nn.Module):
    """x + Attn(LN(x)) + MLP(LN(x)): one LayerNorm shared by both branches, as in the reference."""

    def __init__(self, config: InfiniPythiaConfig):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = InfiniAttention(config)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, hidden, state, valid):
        normed = self.input_layernorm(hidden)
        attn, state = self.attention(normed, state, valid)
        return hidden + attn + self.mlp(normed), state

    def update_memory(self, hidden, state, valid) -> MemoryState:
        """The state after writing hidden, without computing the layer's output."""
        return self.attention.update_memory(self.input_layernorm(hidden), state, valid)


class InfiniPythiaPreTrainedModel(PreTrainedModel):
    config_class = InfiniPythiaConfig
    config: InfiniPythiaConfig
    base_model_prefix = "gpt_neox"
    supports_gradient_checkpointing = False
    _no_split_modules = ["GPTNeoXLayer", "InfiniLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, InfiniAttention):
            nn.init.zeros_(module.gate)


class InfiniPythiaModel(InfiniPythiaPreTrainedModel):
    def __init__(self, config: InfiniPythiaConfig):
        super().__init__(config)
        if config.memory_type == "none":
            raise ValueError("memory_type: 'none' is the Pythia baseline; build it with "
                             "infini_bench.build_model (transformers' GPTNeoXForCausalLM)")
        infini = set(config.infini_layer_ids())
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.emb_dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(
            [InfiniLayer(config) if i in infini else GPTNeoXLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary_emb = GPTNeoXRotaryEmbedding(config=config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_in

    def set_input_embeddings(self, value):
        self.embed_in = value

    def empty_memory(self, batch: int, shared: bool = False, device=None) -> MemoryStates:
        """Empty memory: one per row, or one shared by the batch."""
        c = self.config
        return tuple(MemoryState.empty(1 if shared else batch, c.num_attention_heads, c.num_memories, c.head_dim,
                                       device=device or self.embed_in.weight.device,
                                       normaliser=c.stores_normaliser)
                     for _ in c.infini_layer_ids())

    def forward(self, input_ids=None, attention_mask=None, memory_state: MemoryStates | None = None,
                inputs_embeds=None, output_hidden_states: bool = False):
        """Returns (last hidden states [B, L, hidden], memory after the call, all hidden states or None)."""
        return self._run(input_ids, attention_mask, memory_state, inputs_embeds, output_hidden_states)

    @torch.no_grad()
    def update_memory(self, input_ids, memory_state: MemoryStates | None = None, attention_mask=None) -> MemoryStates:
        """The memory after reading `input_ids`, without predicting: only the layers up to the
        last Infini layer run, and that layer only writes its memory (nothing above it can change
        the memory), for inputs whose predictions are not needed."""
        return self._run(input_ids, attention_mask, memory_state, update_only=True)[1]

    def _run(self, input_ids, attention_mask, memory_state, inputs_embeds=None, output_hidden_states=False,
             update_only=False):
        hidden = self.embed_in(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length, width = hidden.shape
        if memory_state is None:
            memory_state = self.empty_memory(batch, self.config.memory_scope == "stream", hidden.device)
        seg = min(self.config.segment_len, length)
        num_seg = -(-length // seg)
        pad = num_seg * seg - length
        valid = None
        if attention_mask is not None and not bool(attention_mask.all()):
            valid = attention_mask.to(torch.bool)
        if pad:
            hidden = F.pad(hidden, (0, 0, 0, pad))
            if valid is None:
                valid = torch.ones(batch, length, dtype=torch.bool, device=hidden.device)
            valid = F.pad(valid, (0, pad))
        valid = None if valid is None else valid.view(batch, num_seg, seg)
        # Every layer sees all segments at once: [B * T, S, hidden], positions 0..S-1 in each.
        hidden = self.emb_dropout(hidden).view(batch * num_seg, seg, width)
        position_ids = torch.arange(seg, device=hidden.device).unsqueeze(0)
        position_embeddings = self.rotary_emb(hidden, position_ids=position_ids)
        # Padding at the end of the last segment is unseen by causal attention; a caller's own
        # padding mask must reach the softmax layers.
        padding = attention_mask is not None and not bool(attention_mask.all())
        causal_mask = create_causal_mask(
            config=self.config, inputs_embeds=hidden,
            attention_mask=valid.view(batch * num_seg, seg) if padding else None,
            cache=None, position_ids=position_ids)
        states = iter(memory_state)
        new_states, all_hidden = [], []
        last_infini = self.config.infini_layer_ids()[-1]
        for i, layer in enumerate(self.layers):
            if output_hidden_states:
                all_hidden.append(hidden)
            if update_only and i == last_infini:
                state = layer.update_memory(hidden.view(batch, num_seg, seg, width), next(states), valid)
                return None, (*new_states, state), None
            if isinstance(layer, InfiniLayer):
                out, state = layer(hidden.view(batch, num_seg, seg, width), next(states), valid)
                hidden = out.view(batch * num_seg, seg, width)
                new_states.append(state)
            else:
                hidden = layer(hidden, attention_mask=causal_mask, position_ids=position_ids,
                               position_embeddings=position_embeddings)
        hidden = self.final_layer_norm(hidden)
        if output_hidden_states:
            all_hidden.append(hidden)

        def unsegment(x):
            return x.reshape(batch, num_seg * seg, width)[:, :length]

        all_hidden = tuple(unsegment(h) for h in all_hidden) if output_hidden_states else None
        return unsegment(hidden), tuple(new_states), all_hidden


class InfiniPythiaForCausalLM(InfiniPythiaPreTrainedModel, GenerationMixin):
    """Causal LM over `InfiniPythiaModel`.

    `model(input_ids, memory_state=None)` returns `.logits` and `.memory_state`; passing the
    latter to the next call continues the same sequences, so an input of any length can be
    streamed in pieces. Without `memory_state`, sequence scope starts from an empty memory per
    row, and stream scope uses the memory the model carries from its previous call (shared by
    the batch, detached; `reset_memory()` clears it). A caller that passes `memory_state` manages
    the memory itself and the carried stream memory is left untouched;
    `empty_memory(batch_size)` gives independent rows in either scope.
    """

    def __init__(self, config: InfiniPythiaConfig):
        super().__init__(config)
        self.gpt_neox = InfiniPythiaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._stream_state: MemoryStates | None = None
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def reset_memory(self):
        """Forget the stream-scope memory (the reference resets at each epoch and evaluation)."""
        self._stream_state = None

    def empty_memory(self, batch_size: int, shared: bool = False) -> MemoryStates:
        """An empty memory per row, to score independent sequences in either scope, or one
        shared by the batch (the stream memory, as training carries it)."""
        return self.gpt_neox.empty_memory(batch_size, shared)

    def update_memory(self, input_ids, memory_state: MemoryStates, attention_mask=None) -> MemoryStates:
        """The memory after reading `input_ids` on top of `memory_state`, without predicting:
        equal to `self(input_ids, memory_state=memory_state).memory_state`, at the cost of the
        layers up to the last Infini layer only (the haystack of a long document)."""
        return self.gpt_neox.update_memory(input_ids, memory_state, attention_mask=attention_mask)

    def memory_info(self) -> dict:
        """Size of the memory state in bytes (fp32): per memory, and in total per sequence
        (sequence scope) or for the whole stream (stream scope). A hierarchical layer's coarse
        memory is the sum of its fine memories and is not stored; delta_l2 stores no normaliser."""
        c = self.config
        per_memory = c.num_attention_heads * (c.head_dim * c.head_dim + c.head_dim * c.stores_normaliser) * 4
        layers = len(c.infini_layer_ids())
        return {"bytes_per_memory": per_memory, "num_memories": c.num_memories, "num_infini_layers": layers,
                "total_bytes": per_memory * c.num_memories * layers, "scope": c.memory_scope}

    def forward(self, input_ids=None, attention_mask=None, memory_state: MemoryStates | None = None,
                labels=None, inputs_embeds=None, output_hidden_states: bool | None = None,
                logits_to_keep: int = 0, **kwargs) -> InfiniPythiaOutput:
        stream = self.config.memory_scope == "stream"
        carried = stream and memory_state is None
        if carried:
            memory_state = self._stream_state
        hidden, memory_state, all_hidden = self.gpt_neox(
            input_ids, attention_mask=attention_mask, memory_state=memory_state, inputs_embeds=inputs_embeds,
            output_hidden_states=bool(output_hidden_states))
        if stream:
            memory_state = tuple(s.detach() for s in memory_state)
        if carried:
            self._stream_state = memory_state
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return InfiniPythiaOutput(loss=loss, logits=logits, hidden_states=all_hidden, memory_state=memory_state)


def build_model(config: InfiniPythiaConfig) -> PreTrainedModel:
    """The model a config describes: `GPTNeoXForCausalLM` for memory_type "none" (the Pythia
    baseline, saved as a plain gpt_neox checkpoint), `InfiniPythiaForCausalLM` otherwise."""
    if config.memory_type == "none":
        return GPTNeoXForCausalLM(config.to_gpt_neox_config())
    return InfiniPythiaForCausalLM(config)
