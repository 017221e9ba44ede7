"""Configuration of Infini-Pythia: GPT-NeoX dims plus the compressive-memory settings."""

from dataclasses import field

from transformers import GPTNeoXConfig

MEMORY_TYPES = ("none", "single", "multi", "hierarchical")
MEMORY_SCOPES = ("sequence", "stream")
STREAM_UPDATES = ("mean", "reference")
MEMORY_RULES = ("infini", "gated_norm", "delta_l2")

# Real Pythia dims (EleutherAI/pythia-*); the vocabulary size is free so that small
# offline tokenizers can be used with the same architecture.
PRESETS = {
    "pythia-14m": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, intermediate_size=512),
    "pythia-70m": dict(hidden_size=512, num_hidden_layers=6, num_attention_heads=8, intermediate_size=2048),
    "pythia-160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "pythia-410m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
PYTHIA_COMMON = dict(
    vocab_size=50304,
    max_position_embeddings=2048,
    rotary_pct=0.25,
    rotary_emb_base=10000,
    use_parallel_residual=True,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    initializer_range=0.02,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=0,
)


class InfiniPythiaConfig(GPTNeoXConfig):
    """GPT-NeoX config whose `infini_layers` are Infini-attention layers with compressive memory.

    memory_type: "none" (the Pythia baseline, built as transformers' GPTNeoXForCausalLM),
        "single", "multi" (N memories chosen by attention) or "hierarchical" (N fine memories
        plus their sum as a coarse memory, mixed by a learned expansion gate).
    num_memories: N for multi / hierarchical; 1 for single.
    use_delta_rule: write V - retrieve(K) instead of V.
    memory_rule: how the memory is written and read (models/memory.py): "infini" (the paper),
        "gated_norm" (ARMT's normaliser update: z stops growing for keys already stored) or
        "delta_l2" (DeltaNet: L2-normalised SiLU features, no normaliser, token-by-token delta
        writes with a learned per-head strength; always a delta rule).
    infini_layers: layer indices that are Infini layers, or "all" (the Infini-attention paper).
    segment_len: inputs are processed in segments of this many tokens; positions restart
        in each segment and the memory carries what came before.
    memory_scope: "sequence" (paper): one memory per batch row, gradients flow through it
        within the call. "stream" (the reference experiment): one memory shared by the batch,
        carried from one forward call to the next, detached; `model.reset_memory()` clears it.
    bptt_segments: in sequence scope, gradients flow back through the memory across at most
        this many segments (truncated back-propagation; 0: across all segments of a call).
    stream_update: how a batch writes the shared stream memory. "mean" averages the batch
        rows' updates of M and z alike; "reference" reproduces the original code's quirk of
        dividing M's update by batch * segment length but z's by batch only.
    """

    model_type = "infini_pythia"

    memory_type: str = "single"
    num_memories: int = 1
    use_delta_rule: bool = True
    memory_rule: str = "infini"
    infini_layers: list | str = field(default_factory=lambda: [0])
    segment_len: int = 256
    memory_scope: str = "sequence"
    stream_update: str = "mean"
    bptt_segments: int = 0
    use_cache: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.check()

    def check(self):
        """Raise ValueError naming the first bad field and what it accepts."""
        _choice("memory_type", self.memory_type, MEMORY_TYPES)
        _choice("memory_scope", self.memory_scope, MEMORY_SCOPES)
        _choice("stream_update", self.stream_update, STREAM_UPDATES)
        _choice("memory_rule", self.memory_rule, MEMORY_RULES)
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            _positive_int(name, getattr(self, name))
        _positive_int("num_memories", self.num_memories)
        _positive_int("segment_len", self.segment_len)
        if isinstance(self.bptt_segments, bool) or not isinstance(self.bptt_segments, int) or self.bptt_segments < 0:
            raise ValueError(f"bptt_segments: expected 0 (no truncation) or a positive integer, "
                             f"got {self.bptt_segments!r}")
        if not isinstance(self.use_delta_rule, bool):
            raise ValueError(f"use_delta_rule: expected true or false, got {self.use_delta_rule!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size: must be divisible by num_attention_heads={self.num_attention_heads}, "
                f"got {self.hidden_size}"
            )
        if self.memory_type == "single" and self.num_memories != 1:
            raise ValueError(
                f"num_memories: memory_type 'single' accepts only 1, got {self.num_memories} "
                "(use memory_type 'multi' or 'hierarchical' for more)"
            )
        if self.memory_type == "hierarchical" and self.hidden_size < 4:
            raise ValueError(f"hidden_size: hierarchical memory needs at least 4, got {self.hidden_size}")
        if self.stream_update == "reference" and self.memory_scope != "stream":
            raise ValueError("stream_update: 'reference' is accepted only with memory_scope 'stream'")
        if self.stream_update == "reference" and self.memory_rule != "infini":
            raise ValueError("stream_update: 'reference' is accepted only with memory_rule 'infini'")
        if self.memory_rule == "delta_l2" and self.memory_scope == "stream":
            raise ValueError("memory_rule: 'delta_l2' is accepted only with memory_scope 'sequence' (a shared "
                             "stream memory averages the batch's writes, which divides beta by the batch size)")
        if self.memory_rule == "delta_l2" and not self.use_delta_rule:
            raise ValueError("use_delta_rule: memory_rule 'delta_l2' always writes with the delta rule; set true")
        self.infini_layer_ids()

    def infini_layer_ids(self) -> list[int]:
        """Sorted indices of the Infini layers ([] for the baseline)."""
        if self.memory_type == "none":
            return []
        layers = self.infini_layers
        if layers == "all":
            return list(range(self.num_hidden_layers))
        accepted = f"'all' or a non-empty list of distinct layer indices in 0..{self.num_hidden_layers - 1}"
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"infini_layers: expected {accepted}, got {layers!r}")
        for i in layers:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_hidden_layers:
                raise ValueError(f"infini_layers: expected {accepted}, got {layers!r}")
        if len(set(layers)) != len(layers):
            raise ValueError(f"infini_layers: expected {accepted}, got {layers!r}")
        return sorted(layers)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def stores_normaliser(self) -> bool:
        """Whether the memory keeps a normaliser z next to M (every rule but delta_l2)."""
        return self.memory_rule != "delta_l2"

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "InfiniPythiaConfig":
        """Config with the real dims of a Pythia model; any field can be overridden."""
        if name not in PRESETS:
            raise ValueError(f"preset: unknown {name!r}; accepted: {', '.join(PRESETS)}")
        return cls(**{**PYTHIA_COMMON, **PRESETS[name], **overrides})

    def to_gpt_neox_config(self) -> GPTNeoXConfig:
        """The plain GPT-NeoX config with the same dims (for the Pythia baseline)."""
        own = {"memory_type", "num_memories", "use_delta_rule", "memory_rule", "infini_layers", "segment_len",
               "memory_scope", "stream_update", "bptt_segments", "model_type", "architectures", "transformers_version"}
        values = {k: v for k, v in self.to_dict().items() if k not in own}
        values["use_cache"] = True
        return GPTNeoXConfig(**values)


def _choice(name, value, accepted):
    if value not in accepted:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, accepted))}, got {value!r}")


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
