"""The policy file: a pydantic schema that is its own documentation (`council policy-schema`, docs/policy.md).

Only shape and internal references are checked here; what needs the machine (model files, the installed
llama-server's spec types, vocabularies) is checked by `council.policy.checks`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from council.paths import council_home
from council.policy.extractors import ExtractError, parse_extractor_spec
from council.units import Duration, Size

if TYPE_CHECKING:
    from pydantic import GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import CoreSchema

# The largest value llama-server reads for an integer flag (std::stoi: a 32-bit int).
MAX_FLAG_INT = 2**31 - 1
MAX_CTX_SIZE = 2**24
KvType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
TieBreak = Literal["weight", "latency", "order", "logprob"]
ToolInstructions = Literal["none", "brief", "listed"]  # what a council adds for a request with `tools`
Strategy = Literal["majority", "weighted", "confidence", "similarity", "judge"]
# MTP was spelled `mtp` in older llama.cpp forks and `draft-mtp` upstream.
MTP_SPELLINGS = ("draft-mtp", "mtp")
# Draft types whose length no llama-server flag sets (build 11434, common/speculative.cpp: ngram-cache's
# `n_draft = 8; // TODO get from config?`): n_max can only turn them off, so there is nothing to adapt or tune.
FIXED_DRAFT_LENGTHS = {"ngram-cache": 8}
# Flags council sets on every process (members/launch.py), with the short spellings llama-server takes
# (common/arg.cpp): where it listens, the model it loads and the name it answers as (the router checks both),
# and /metrics, which it scrapes. A policy's `args` come last and llama-server keeps a repeated flag's last value,
# so one of these there would replace council's own: a process bound to every interface, say.
COUNCIL_FLAGS: dict[str, tuple[str, ...]] = {"--host": (), "--port": (), "--model": ("-m",), "--alias": ("-a",),
                                             "--metrics": ()}
# Council gives each start its own key in the environment: one in the argument list would replace it (every
# start fails its health check) and be readable by every local user in /proc/PID/cmdline.
KEY_FLAGS = ("--api-key", "--api-key-file")


def owned_flag(arg: str) -> str | None:
    """The flag of COUNCIL_FLAGS or KEY_FLAGS that `arg` spells (`--host`, `--host=X`, `--api_key`, `-m`), or
    None. llama-server reads `_` as `-` in a long flag."""
    flag = arg.split("=", 1)[0]
    if flag.startswith("--"):
        flag = flag.replace("_", "-")
    if flag in KEY_FLAGS:
        return flag
    return next((name for name, short in COUNCIL_FLAGS.items() if flag == name or flag in short), None)


_VAR_REF = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")  # what expandvars reads, as it left it


def expand_path(value: Path) -> Path:
    """`~` and `$VARS` expand, so one policy works for every user; `$COUNCIL_HOME` defaults to the cache."""
    text = str(value)
    if "COUNCIL_HOME" not in os.environ:
        home = str(council_home())
        text = text.replace("${COUNCIL_HOME}", home).replace("$COUNCIL_HOME", home)
    expanded = os.path.expandvars(text)
    if unset := [name for name in _VAR_REF.findall(expanded) if name not in os.environ]:
        # expandvars leaves them as they are: the file was then "missing", or, with `memory:`, a literal `${X}`
        # path went on to launch
        raise ValueError(f"{text}: ${unset[0]} is not set (the path reads it from the environment)")
    try:
        return Path(expanded).expanduser()
    except RuntimeError:  # `~nosuchuser/...`: "Could not determine home directory"
        raise ValueError(f"{text}: no such user's home (`~user` must name a user of this machine)") from None


ExpandedPath = Annotated[Path, AfterValidator(expand_path)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. No float of a policy (weights,
    # temperatures, rates, shares, step costs) means anything as YAML's `.inf` or `.nan`: an infinite weight
    # outvotes every other seat and NaN passes no comparison, so both are refused before any `gt`/`le` bound.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApiKey(_Strict):
    """A key clients send as `Authorization: Bearer KEY`: stored as its SHA-256 or read from an env var,
    never written in the policy in clear."""

    name: str = Field(min_length=1, description="Who holds the key (logs and metrics name it).",
                      examples=["agents"])
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="The key's SHA-256 as 64 hex digits (`printf %s KEY | sha256sum`).",
                               examples=["8966332067fe725ac6fc3cf087b7954dbd657005a7710acb2654034dab324fba"])
    env: str | None = Field(default=None, description="Or: the environment variable that holds the key.",
                            examples=["COUNCIL_AGENT_KEY"])
    scopes: list[Literal["chat", "admin"]] = Field(
        default=["chat"], description="`chat`: the OpenAI API and the ballots of its own requests; `admin`: "
        "`/admin/*`, every ballot and the whole dashboard.",
        examples=[["chat", "admin"]])
    rate_limit: float | None = Field(default=None, gt=0, description="Requests per second (a token bucket shared "
                                     "by every router); none is unlimited.", examples=[5])
    max_concurrency: int | None = Field(default=None, ge=1, description="Requests in flight at once; none is "
                                        "unlimited.", examples=[4])

    @model_validator(mode="after")
    def _one_source(self) -> ApiKey:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("an API key needs exactly one of `sha256:` (hex digest of the key) or `env:` (a variable)")
        return self


class ServerConfig(_Strict):
    """`council serve`'s HTTP API: where it listens, who may call it, and its limits."""

    # Not empty: "" binds every interface, which reads as no address at all.
    host: str = Field(default="127.0.0.1", min_length=1, description="Address to listen on (`serve --host` "
                      "overrides it); anything but loopback needs `api_keys`.")
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on (`serve --port` overrides it).")
    api_keys: list[ApiKey] = Field(default=[], description="Keys clients send as `Authorization: Bearer KEY`; "
                                   "none: the router binds to loopback only.",
                                   examples=[[{"name": "agents", "env": "COUNCIL_AGENT_KEY"}]])
    max_queue: int = Field(default=32, ge=1, description="Requests waiting for or inside one council (or one "
                           "model asked by passthrough); past it, 429 with Retry-After.")
    max_body: Size = Field(default=1 << 20, gt=0, description="Largest request body; past it, 413.",
                           examples=["4MiB"])
    fetch_media: bool = Field(default=False, description="Pass image or audio given by URL to local members with a "
                              "projector, which fetch it themselves from their host (any address a client names: "
                              "cloud metadata, internal services). Off: such media is 400 `remote_media`; send it "
                              "inline as a `data:` URL.")
    body_timeout: Duration = Field(default=60.0, gt=0, le=3600, description="How long a request's body may take to "
                                   "arrive; past it, 408 and the connection closes (a client that sends part of a "
                                   "body and goes silent holds no socket for good).", examples=["2m"])
    ballots: int = Field(default=1000, ge=1, description="Recent ballots kept for `/v1/ballots/{id}`, and as many "
                         "Responses conversations for `previous_response_id`.")
    # Several hosts (state: redis://...): how other routers reach this one's members, the env var holding
    # the key hosts and routers share for member calls, and how often a host re-publishes its members.
    advertise_url: str | None = Field(default=None, description="With `state: redis://`: the URL other routers "
                                      "reach this host's members at.", examples=["http://gpu-a:8080"])
    cluster_key_env: str = Field(default="COUNCIL_CLUSTER_KEY", description="The environment variable holding "
                                 "the key hosts and routers share for member calls.")
    heartbeat: Duration = Field(default=2.0, description="How often a host re-publishes its ready members "
                                "(they expire after three beats).", examples=["5s"])
    history: Duration = Field(default=10.0, ge=1.0, description="How often the dashboard's time series take a "
                              "point; the router keeps the last hour of them in memory.", examples=["10s"])


class GpuDecl(_Strict):
    """A GPU (or the CPU's memory) to plan on when NVML sees none, or to override what it sees."""

    name: str = Field(min_length=1, description="`cpu` plans on host memory; a seen GPU's name, `gpuN` or UUID "
                      "caps that GPU.", examples=["cpu"])
    memory: Size = Field(gt=0, description="Memory to plan with.", examples=["24GiB"])


class SlotConfig(_Strict):
    """Each GPU, minus `reserve`, is cut into fixed slots of `size`; a member takes whole slots."""

    size: Size = Field(default=3 << 30, gt=0, description="The size of one slot.", examples=["4GiB"])
    reserve: Size = Field(default=512 << 20, description="Memory kept free on each GPU.", examples=["1GiB"])


class AutoDraft(_Strict):
    """How `n_max: auto` adapts the draft length live (see `council.members.draft_tuning`)."""

    start: int = Field(default=3, ge=0, le=32, description="The n the first process runs with (`council tune "
                       "--write` writes it).")
    limit: int = Field(default=8, ge=1, le=32, description="The largest n considered.")
    floor: int = Field(default=0, ge=0, le=32, description="The smallest n considered (0: speculation may be "
                       "turned off).")
    interval: Duration = Field(default=5.0, gt=0, description="How often the counters are read and judged.",
                               examples=["10s"])
    window: Duration = Field(default=60.0, gt=0, description="How much of the counters' history one judgement "
                             "looks at.", examples=["2m"])
    min_drafts: int = Field(default=200, ge=1, description="Draft steps in the window before anything is "
                            "concluded.")
    margin: float = Field(default=0.10, ge=0, description="Another n must be predicted this much faster "
                          "(0.1: 10%) ...")
    sustain: int = Field(default=3, ge=1, description="... in this many judgements in a row.")
    probe_after: Duration = Field(default=600.0, gt=0, description="At n = 0, try n = 1 again after this long.",
                                  examples=["30m"])

    @model_validator(mode="after")
    def _ordered(self) -> AutoDraft:
        if not self.floor <= self.start <= self.limit:
            raise ValueError(f"need floor ({self.floor}) <= start ({self.start}) <= limit ({self.limit})")
        return self


class DraftConfig(_Strict):
    """Speculative decoding: `mtp` (the model's own MTP head), `model` (a draft model), or a llama-server
    `--spec-type` value such as `ngram-mod`; `none` turns it off. `n_max: auto` lets council pick the draft
    length live from the member's acceptance counters (`auto:` says how), `step_cost` is the time of a decode
    step at each n relative to a plain one, as `council tune` measured it (a default when absent)."""

    type: str = Field(default="none", description="`mtp`, `model`, `none`, or a llama-server `--spec-type` "
                      "value (`ngram-mod`, ...).", examples=["mtp"])
    n_max: int | Literal["auto"] = Field(default=3, description="Draft length (0..32; 0 keeps the draft "
                                         "configured but off; `ngram-cache` drafts 8 at any other), or `auto`.",
                                         examples=[2])
    n_min: int | None = Field(default=None, ge=0, description="llama-server's smallest draft length (at most "
                              "`n_max`, unless `n_max` is 0: off).", examples=[1])
    model: str | None = Field(default=None, description="For `type: model`: the draft model, another model of "
                              "the policy (same vocabulary).", examples=["coder-0.5b"])
    step_cost: dict[int, Annotated[float, Field(gt=0)]] = Field(
        default={}, description="Time of a decode step at each n relative to a plain one (`council tune --write` "
        "measures it); absent: 1 + 0.5n for MTP and draft models, 1 + 0.1n for n-grams.",
        examples=[{0: 1.0, 1: 1.66, 2: 2.11}])
    auto: AutoDraft = Field(default=AutoDraft(), description="How `n_max: auto` adapts.",
                            examples=[{"start": 2, "limit": 8, "window": "60s"}])

    @field_validator("n_max")
    @classmethod
    def _n_max_range(cls, value: int | str) -> int | str:
        # 0 keeps the draft configured but off: what `council tune` writes when no speculation was fastest.
        if isinstance(value, int) and not 0 <= value <= 32:
            raise ValueError("n_max must be auto or between 0 and 32")
        return value

    @model_validator(mode="after")
    def _model_only_for_model_type(self) -> DraftConfig:
        if self.type == "model" and not self.model:
            raise ValueError("draft type `model` needs `model: NAME` of another model in the policy")
        if self.type != "model" and self.model:
            raise ValueError(f"`model` is only for draft type `model`, not {self.type!r}")
        # Not at n_max 0: speculation is off there and n_min unused, and 0 is what `council tune --write` writes
        # when no speculation was fastest, which must not make a policy with n_min invalid.
        if self.n_min is not None and isinstance(self.n_max, int) and 0 < self.n_max < self.n_min:
            raise ValueError(f"n_min ({self.n_min}) is larger than n_max ({self.n_max})")
        if self.n_max == "auto" and self.type == "none":
            raise ValueError("`n_max: auto` needs a draft type")
        if self.n_max == "auto" and self.type in FIXED_DRAFT_LENGTHS:
            raise ValueError(f"`n_max: auto` cannot change {self.type}'s draft length: llama-server drafts "
                             f"{FIXED_DRAFT_LENGTHS[self.type]} tokens with it whatever is asked (0 turns it off)")
        return self

    @property
    def is_auto(self) -> bool:
        return self.n_max == "auto"

    @property
    def n(self) -> int:
        """The draft length a process launches with: `n_max`, or `auto.start` (0: no speculation)."""
        if self.type == "none":
            return 0
        return self.auto.start if self.n_max == "auto" else int(self.n_max)

    def accepts_n(self, n: int) -> bool:
        """Whether this draft may run at length n, so `council tune` may recommend and write it: within
        `auto.floor`..`auto.limit` under `n_max: auto`, else 0 (off) or at least `n_min`."""
        if self.is_auto:
            return self.auto.floor <= n <= self.auto.limit
        return 0 <= n <= 32 and (n == 0 or self.n_min is None or n >= self.n_min)

    def with_n(self, n: int) -> DraftConfig:
        """This draft at length n for one launch (n = 0: speculation off); `auto` stays readable."""
        if n == 0:
            return self.model_copy(update={"type": "none", "model": None, "n_max": self.n_max, "n_min": None,
                                           "auto": self.auto.model_copy(update={"start": 0})})
        return self.model_copy(update={"n_max": n, "n_min": None if self.n_min is None else min(self.n_min, n)})

    def spec_type(self, spec_types: tuple[str, ...]) -> str | None:
        """The llama-server `--spec-type` value for this draft type in a build that lists `spec_types`
        (MTP is `draft-mtp` upstream, `mtp` in older forks; a draft model is `draft-simple`), or None."""
        if self.type == "mtp":
            return next((s for s in MTP_SPELLINGS if s in spec_types), None)
        wanted = "draft-simple" if self.type == "model" else self.type
        return wanted if wanted in spec_types else None


class RemoteConfig(_Strict):
    """A model served elsewhere, called through litellm (any provider it supports, or an OpenAI-compatible
    URL as `openai/NAME` with `api_base`). It takes no slot and no process here."""

    model: str = Field(min_length=1, description="The litellm model name.", examples=["openai/gpt-4o-mini"])
    api_base: str | None = Field(default=None, description="The provider's URL (an OpenAI-compatible server).",
                                 examples=["http://127.0.0.1:9000/v1"])
    api_key_env: str | None = Field(default=None, description="The environment variable holding the API key "
                                    "(never the key itself in the file).", examples=["OPENAI_API_KEY"])


class ModelConfig(_Strict):
    """A model: a GGUF file and how llama-server serves it (each member of it runs as a process of its own, or one
    per council with `share: true`), or a `remote:` model."""

    path: ExpandedPath | None = Field(default=None, description="The GGUF file (`~` and `$VARS` expand; "
                                      "`$COUNCIL_HOME` defaults to the cache).",
                                      examples=["$COUNCIL_HOME/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"])
    remote: RemoteConfig | None = Field(default=None, description="Or: a model served elsewhere, through litellm.",
                                        examples=[{"model": "openai/gpt-4o-mini", "api_key_env": "OPENAI_API_KEY"}])
    # llama-server reads its integer flags with std::stoi: past 2**31 - 1 a member cannot start, after `check` and
    # `plan` said the policy was fine. A context is bounded well below that (a shared process's is ctx_size x its
    # members, still within it for up to 127).
    ctx_size: int = Field(default=4096, ge=64, le=MAX_CTX_SIZE, description="Context length of a process for each "
                          "seat it serves, in tokens (`--ctx-size`: this times the seats of `samples` or `share: true` "
                          "in one process), split among its `parallel` slots (each gets ctx_size / parallel unless "
                          "`kv_unified`); at most 16,777,216 (2^24), more than any model is trained for.")
    cache_type_k: KvType = Field(default="f16", description="KV cache type of keys.", examples=["q8_0"])
    cache_type_v: KvType = Field(default="f16", description="KV cache type of values.", examples=["q8_0"])
    gpu_layers: Literal["all"] | Annotated[int, Field(ge=0)] = Field(
        default="all", description="Layers offloaded to the GPU.", examples=[20])
    flash_attn: bool | Literal["auto"] = Field(default="auto", description="Flash attention: true, false or auto.",
                                             examples=[True])
    parallel: int = Field(default=1, ge=1, le=256, description="Requests the process serves at once (llama-server "
                          "slots).")
    kv_unified: bool = Field(default=False, description="One KV buffer shared by every slot (`--kv-unified`).")
    batch_size: int = Field(default=2048, ge=1, le=MAX_FLAG_INT, description="Logical batch size (`--batch-size`; "
                            "at most 2^31 - 1, what llama-server reads).")
    ubatch_size: int = Field(default=512, ge=1, le=MAX_FLAG_INT, description="Physical batch size (`--ubatch-size`), "
                             "at most `batch_size`.")
    threads: int | None = Field(default=None, ge=1, le=MAX_FLAG_INT, description="CPU threads; none: processes "
                                "sharing the CPU split its cores.", examples=[2])
    draft: DraftConfig = Field(default=DraftConfig(), description="Speculative decoding.",
                               examples=[{"type": "mtp", "n_max": 2}])
    share: bool = Field(default=False, description="Members of this model in one council share one process (each "
                        "with the model's `parallel` slots and `ctx_size`: the process has that many times each).")
    recover_tool_calls: bool = Field(default=False, description="Chat completions passthrough (`model` names this "
                                     "model) with `tools`: a reply whose text is nothing but valid tool calls is "
                                     "returned as "
                                     "those calls (a stream is held back until it is known); councils have "
                                     "`vote.recover_tool_calls`.", examples=[True])
    # llama-server's prompt cache lives in host memory and grows with use (its default cap is 8 GiB):
    # off unless asked for, and counted in the plan when it is.
    cache_ram: Size = Field(default=0, description="llama-server's prompt cache in host memory (0: off); "
                            "counted in the plan.", examples=["1GiB"])
    memory: Size | None = Field(default=None, gt=0, description="The process's memory for the plan, instead of "
                                "the estimate from the GGUF header.", examples=["3.65GiB"])
    args: list[str] = Field(default=[], description="More llama-server arguments, one per item, passed last "
                            "and verbatim; not the flags council sets itself (`--host`, `--port`, `--model`, "
                            "`--alias`, `--metrics`) nor an API key (`--api-key`, `--api-key-file`).",
                            examples=[["--mmproj", "/models/mmproj.gguf"]])

    @field_validator("args")
    @classmethod
    def _no_shell_strings_nor_owned_flags(cls, args: list[str]) -> list[str]:
        for arg in args:
            if any(c in arg for c in "\n\0"):
                raise ValueError(f"argument {arg!r} holds a newline or NUL: pass one argument per list item")
            flag = owned_flag(arg)
            if flag in KEY_FLAGS:
                raise ValueError(f"argument {arg!r} sets an API key: council gives every process its own, in its "
                                 "environment; this one would replace it, and show in the process's command line")
            if flag is not None:
                raise ValueError(f"argument {arg!r} sets {flag}, which council sets itself for every process (on "
                                 "127.0.0.1 at a port it picks, the model's file and name, /metrics: how the router "
                                 "reaches and checks it); llama-server would take this one instead")
        return args

    def for_members(self, members: int) -> ModelConfig:
        """The process serving `members` seats of a shared model: each its own `parallel` slots and `ctx_size`."""
        if members <= 1:
            return self
        return self.model_copy(update={"parallel": self.parallel * members, "ctx_size": self.ctx_size * members})

    @model_validator(mode="after")
    def _local_or_remote(self) -> ModelConfig:
        if (self.path is None) == (self.remote is None):
            raise ValueError("a model needs exactly one of `path:` (a local GGUF) or `remote:` (a litellm model)")
        return self

    @model_validator(mode="after")
    def _ubatch_within_batch(self) -> ModelConfig:
        if self.ubatch_size > self.batch_size:
            raise ValueError(f"ubatch_size ({self.ubatch_size}) is larger than batch_size ({self.batch_size})")
        return self


class Sampling(_Strict):
    """A member's own sampling settings: they win over the request's, they are what makes members differ."""

    temperature: float | None = Field(default=None, ge=0, le=5, description="Sampling temperature (0: greedy).",
                                      examples=[0.7])
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling.", examples=[0.95])
    # Bounded as llama-server's own integers are: past 64 bits no request to the member could even be written.
    top_k: int | None = Field(default=None, ge=0, le=MAX_FLAG_INT, description="Top-k sampling.", examples=[40])
    seed: int | None = Field(default=None, description="Sampling seed (with `samples: K`, sample k uses "
                             "seed + k), mixed with a hash of the seat's messages and tools: one question gets "
                             "the same draws each time, other questions other draws (a seed alone would replay one "
                             "random sequence on every question). Negative: llama-server's random.", examples=[1])
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_FLAG_INT, description="Most tokens of a reply.",
                                   examples=[400])
    system: str | None = Field(default=None, description="A system prompt added to the request's: after its system "
                               "message's text, in that one message (first, when it has none).",
                               examples=["Reason step by step, then end with \"The answer is N.\""])


class MemberConfig(_Strict):
    """One member of a council: a model of the policy, its vote's weight and its sampling."""

    model: str = Field(description="A model of the policy (a key of `models`).", examples=["qwen-0.5b"])
    # Bounded so that no council's sum of weights can overflow to infinity, where every answer ties at `inf` and the
    # vote has no winner; weights only count relative to each other.
    weight: float = Field(default=1.0, gt=0, le=1e6, description="The member's vote counts this much (`weighted`, "
                          "`confidence`, ties by weight); at most 1,000,000 (weights are relative).", examples=[1.5])
    name: str | None = Field(default=None, min_length=1, description="Its name in ballots and metrics; "
                             "default `COUNCIL/INDEX`. Unique across every council: it names its process and "
                             "its seats.", examples=["greedy"])
    sampling: Sampling = Field(default=Sampling(), description="The member's sampling settings.",
                               examples=[{"temperature": 0.7, "seed": 7}])
    rate_limit: float | None = Field(default=None, gt=0, description=(
        "Requests per second (fractions are exact: 2.5 is 5 requests in any 2 s) to this member's target: its "
        "llama-server process, or its remote model. Seats, samples and passthrough on one target share one "
        "limit; where entries on one target give different rates, the strictest wins. A request for K grouped "
        "samples (`n: K`) counts as K requests. Unset: unlimited."), examples=[2.5])
    # Self-consistency in one line: K votes from K samples of this model, served by one process with K slots
    # (and asked with one request whose `n` is K).
    samples: int = Field(default=1, ge=1, le=64, description="K votes from K samples of this model (seats "
                         "`ENTRY#0` .. `ENTRY#K-1`), one process with the model's `parallel` slots and `ctx_size` for "
                         "each (K times each in all).", examples=[8])
    # One council may hold models that need different instructions (SmolLM2's template renders no tools), or
    # give seats of one model different prompts, so that they err independently.
    tool_instructions: ToolInstructions | None = Field(
        default=None, description="This member's own `vote.tool_instructions`, for each of its `samples` (which "
        "still share one request). Unset: the council's.", examples=["listed"])

    def seat(self, k: int) -> MemberConfig:
        """Sample k of this entry as a one-vote member."""
        if self.samples == 1:
            return self
        seed = None if self.sampling.seed is None else self.sampling.seed + k
        return self.model_copy(update={"samples": 1, "sampling": self.sampling.model_copy(update={"seed": seed})})


class CascadeConfig(_Strict):
    """Stages of members (indexes into the council's seats): the first stage is asked; when its answers agree
    (the leader holds `agreement` of the votes its seats could cast, and no tie: a seat that failed or abstained
    counts against it), the council answers and later stages are
    never called; otherwise the next stage is asked. Written `cascade: [[0, 1], [2, 3, 4]]`, or
    `cascade: {first: 2}` (the first two seats, then the rest), or `{first: 3, then: 1}` (then one more seat at
    a time, as Adaptive-Consistency samples), optionally with `agreement: 0.75`."""

    stages: list[list[Annotated[int, Field(ge=0)]]] = Field(
        default=[], description="Seat indexes per stage (the list form `cascade: [[0, 1], [2, 3, 4]]` is this).",
        examples=[[[0, 1], [2, 3, 4]]])
    first: int | None = Field(default=None, ge=1, description="Or: the first N seats, then the rest.",
                              examples=[3])
    then: int | None = Field(default=None, ge=1, description="With `first`: then K more seats at a time.",
                             examples=[1])
    agreement: float = Field(default=1.0, gt=0.5, le=1.0, description="The share of the votes the seats asked "
                             "could cast that the leader needs for a stage to decide (1.0: unanimous; a seat that "
                             "failed or abstained counts against it).", examples=[0.75])

    @model_validator(mode="before")
    @classmethod
    def _list_form(cls, value: object) -> object:
        return {"stages": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _one_form(self) -> CascadeConfig:
        if bool(self.stages) == (self.first is not None):
            raise ValueError("a cascade is a list of stages (`[[0, 1], [2, 3]]`) or `{first: N}`")
        if self.stages and any(not stage for stage in self.stages):
            raise ValueError("a cascade stage cannot be empty")
        if self.then is not None and self.first is None:
            raise ValueError("`then` goes with `first`: `cascade: {first: 3, then: 1}`")
        return self

    def resolve(self, seats: int) -> list[list[int]]:
        """The stages as seat indexes; `first: N` is [[0..N-1], [N..seats-1]]; `then: K` cuts the rest into
        stages of K seats."""
        if self.first is not None:
            rest = list(range(self.first, seats))
            step = self.then or len(rest) or 1
            return [list(range(min(self.first, seats))), *(rest[i:i + step] for i in range(0, len(rest), step))]
        return [list(stage) for stage in self.stages]

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        # What users write includes the list form the before-validator turns into `stages`.
        schema = handler(core)
        if handler.mode != "validation":
            return schema
        stage = handler.resolve_ref_schema(schema)["properties"]["stages"]["items"]
        return {"anyOf": [{"type": "array", "items": {**stage, "minItems": 1}, "minItems": 1}, schema]}


class VoteConfig(_Strict):
    """How the council decides: what is extracted from each reply, and how the votes count."""

    strategy: Strategy = Field(default="majority", description="`majority`, `weighted`, `confidence` (weight x "
                               "p^(1/T) from token logprobs), `similarity` (medoid of the heaviest cluster) or "
                               "`judge`.", examples=["confidence"])
    extract: str = Field(default="auto", description="What a reply votes with: `number`, `choice`, `text`, "
                         "`json:PATH`, `regex:PATTERN` or `auto`.", examples=["number"])
    tie_break: list[TieBreak] = Field(default=["weight", "latency", "order"], description="Rules that break a "
                                      "tie, in order (`order` always ends the list).",
                                      examples=[["logprob", "order"]])
    judge: int | str | None = Field(default=None, description="For `judge`: the member (index or name) that "
                                    "picks among the anonymised answers.", examples=[0])
    # T > 1 flattens towards a plain weighted vote, T < 1 sharpens towards the surest member.
    confidence_temperature: float = Field(default=1.0, gt=0, description="For `confidence`: T in weight x "
                                          "p^(1/T).", examples=[0.5])
    # See council/voting/confidence.py; `council eval` scores all three on your data.
    confidence: Literal["answer", "reply", "tail"] = Field(
        default="tail", description="For `confidence`: p of the answer's tokens, of the whole reply, or of its "
        "least likely tenth.", examples=["answer"])
    cascade: CascadeConfig | None = Field(default=None, description="Ask stages of seats, the next only when "
                                          "the ones before did not agree.", examples=[{"first": 3}])
    # README "Agents" / "Tool calls": how a request with `tools` is voted on.
    tools: Literal["set", "per_argument"] = Field(
        default="set", description="With `tools` in the request: `set` votes on each seat's whole set of calls; "
        "`per_argument` on which functions are called, then on each argument's value.", examples=["per_argument"])
    # Measured on BFCL (README "Agents"): what small members need to write parallel calls and to decline.
    tool_instructions: ToolInstructions = Field(
        default="brief", description="With `tools` in the request, added to each member's system message: `brief` "
        "says how to answer (every call the request needs, as a JSON list; plain text when no tool fits); "
        "`listed` adds each tool's name and parameters, for members whose chat template has no tool syntax "
        "(SmolLM2, Gemma 3); `none` adds nothing. A member's own `tool_instructions` wins over this.",
        examples=["listed"])
    recover_tool_calls: bool = Field(default=True, description="With `tools` in the request: a reply whose text "
                                     "is nothing but tool calls (fenced or bare JSON, `<tool_call>` tags, ...) "
                                     "votes and answers with those calls.", examples=[False])

    @field_validator("extract")
    @classmethod
    def _known_extractor(cls, value: str) -> str:
        # The same grammar voting builds extractors from, so a spec that would fail at vote time fails here.
        try:
            parse_extractor_spec(value)
        except ExtractError as exc:
            raise ValueError(f"{exc}") from None
        return value

    @field_validator("tie_break")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("tie_break lists a rule twice")
        return value

    @model_validator(mode="after")
    def _judge_named_only_for_judge(self) -> VoteConfig:
        if self.strategy == "judge" and self.judge is None:
            raise ValueError("strategy `judge` needs `judge:` (a member index or name)")
        return self


class FallbackConfig(_Strict):
    """What to run instead when the council does not fit: its first `members`, and/or another `model`."""

    members: int | None = Field(default=None, ge=1, description="Keep the first N members.", examples=[3])
    model: str | None = Field(default=None, description="Run the members on this (smaller) model instead.",
                              examples=["coder-0.5b"])

    @model_validator(mode="after")
    def _something(self) -> FallbackConfig:
        if self.members is None and self.model is None:
            raise ValueError("a fallback needs `members:` (how many to keep) or `model:` (a smaller model)")
        return self


class CouncilConfig(_Strict):
    """A council: its members, how they vote, and how long and how many answers it waits for."""

    members: list[MemberConfig] = Field(min_length=1, description="The members, in order (the order ties end "
                                        "on).", examples=[[{"model": "qwen-0.5b", "weight": 1.5},
                                                           {"model": "smollm2"}]])
    vote: VoteConfig = Field(default=VoteConfig(), description="How the council decides.",
                             examples=[{"strategy": "weighted", "extract": "number"}])
    quorum: Literal["majority", "all"] | Annotated[int, Field(ge=1)] = Field(
        default="majority", description="Answers needed (of the seats asked): `majority`, `all` or a number; "
        "fewer is 503 `quorum_not_met`.", examples=[1])
    timeout: Duration = Field(default=30.0, description="Members still working after this are `timeout`.",
                              examples=["60s"])
    fallback: FallbackConfig | None = Field(default=None, description="What runs instead when the council does "
                                            "not fit.", examples=[{"members": 3}])
    # Off: one request per member (to compare, or for old servers).
    share_prompt: bool = Field(default=True, description="Members that would send the same request to the same "
                               "process, differing only in seed, share one request with `n` (the prompt is "
                               "read once).")
    # `auto` chains when the process's measured prefill of this prompt takes longer than its measured
    # generation of an answer (long prompts, short answers, a CPU).
    prompt_reuse: Literal["auto", "chain", "parallel"] = Field(
        default="auto", description="Seats sending one prompt to one process with different sampling: `chain` "
        "asks them one after another (each reuses the cached prompt), `parallel` at once, `auto` by the "
        "process's own timings.", examples=["chain"])

    def entry_names(self, council: str) -> list[str]:
        """Each member entry's name as written: its own `name:`, else `COUNCIL/INDEX`."""
        return [m.name or f"{council}/{i}" for i, m in enumerate(self.members)]

    def seats(self, council: str) -> list[tuple[str, MemberConfig, str]]:
        """Every vote of the council in order: (seat name, its one-vote config, the entry it comes from). An
        entry with `samples: K` gives K seats named `ENTRY#0` .. `ENTRY#K-1`."""
        out = []
        for entry, member in zip(self.entry_names(council), self.members, strict=True):
            if member.samples == 1:
                out.append((entry, member, entry))
            else:
                out += [(f"{entry}#{k}", member.seat(k), entry) for k in range(member.samples)]
        return out

    def member_names(self, council: str) -> list[str]:
        """Each seat's name (one per vote)."""
        return [name for name, _, _ in self.seats(council)]

    @property
    def size(self) -> int:
        return sum(m.samples for m in self.members)

    def stages(self) -> list[list[int]]:
        """Seat indexes per cascade stage; one stage of every seat without a cascade."""
        cascade = self.vote.cascade
        return cascade.resolve(self.size) if cascade is not None else [list(range(self.size))]

    def quorum_count(self, asked: int | None = None) -> int:
        """Answers needed; with a cascade it counts the seats asked so far (`asked`), not the whole council."""
        return quorum_needed(self.quorum, self.size if asked is None else asked)


def quorum_needed(quorum: int | Literal["majority", "all"], seats: int) -> int:
    """Answers a council's `quorum` needs of `seats` asked (the live engine's rule, and the offline replay's)."""
    if quorum == "all":
        return seats
    if quorum == "majority":
        return seats // 2 + 1
    return min(quorum, seats)


class Policy(_Strict):
    """A council policy: the models (a GGUF and how to serve it), the councils (members and their vote), the
    GPUs and the slot size. `council check` validates it; `council plan` packs it into slots."""

    version: Literal[1] = Field(default=1, description="The policy format's version.")
    server: ServerConfig = Field(default=ServerConfig(), description="The HTTP API of `council serve`.",
                                 examples=[{"host": "127.0.0.1", "port": 8080}])
    state: str = Field(default="memory", description="`memory` (one router), or a `redis://` URL that routers "
                       "and GPU hosts share; `${NAME}` in it is read from the environment (a password: "
                       "`redis://:${COUNCIL_REDIS_PASSWORD}@redis:6379/0`).",
                       examples=["redis://127.0.0.1:6379/0"])
    gpus: list[GpuDecl] = Field(default=[], description="GPUs to plan on where NVML sees none (`cpu`: host "
                                "memory), or caps on seen ones.", examples=[[{"name": "cpu", "memory": "8GiB"}]])
    slots: SlotConfig = Field(default=SlotConfig(), description="How each GPU is cut into slots.",
                              examples=[{"size": "1GiB", "reserve": "1GiB"}])
    models: dict[str, ModelConfig] = Field(
        default={}, description="The models, by the name councils use.",
        examples=[{"qwen-0.5b": {"path": "$COUNCIL_HOME/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}}])
    councils: dict[str, CouncilConfig] = Field(default={}, description="The councils, by the name a request's "
                                               "`model` names.",
                                               examples=[{"demo": {"members": [{"model": "qwen-0.5b"}]}}])

    def with_draft_n(self, model: str, n: int) -> Policy:
        """This policy with `model` launched at draft length n (what a live retune plans and starts)."""
        config = self.models[model]
        changed = config.model_copy(update={"draft": config.draft.with_n(n)})
        return self.model_copy(update={"models": {**self.models, model: changed}})

    @field_validator("state")
    @classmethod
    def _state_store(cls, value: str) -> str:
        if value.startswith(("redis://", "rediss://")):
            # redis-py reads a database that is no number (`/zero`, `/1x`) as 0, without a word: two deployments
            # meant to be apart would share its leases, ballots and rate limits. (The URL is not shown: a password.)
            path = urlsplit(value).path
            if path not in ("", "/") and "${" not in path and not re.fullmatch(r"/\d+", path):
                raise ValueError(f"the database after the host must be a number (`/0`, `/1`...), not {path[1:]!r}")
            return value
        if value == "memory" or value.startswith("unix://"):
            return value
        raise ValueError(f"state must be `memory` or a redis:// URL, not {value!r}")
