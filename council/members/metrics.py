"""A member's live figures: read from its llama-server's Prometheus `/metrics`, or from response timings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from council.members.draft_tuning import DraftCounters

DRAFT_TOKENS = "llamacpp:spec_decode_num_draft_tokens_total"
DRAFT_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
DRAFT_STEPS = "llamacpp:spec_decode_num_drafts_total"
# Accepted tokens per draft position, label `position` = "0", "1", … (build 11434 exports it).
DRAFT_ACCEPTED_PER_POS = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"
TOKENS_PER_SECOND = "llamacpp:predicted_tokens_seconds"
REQUESTS = "llamacpp:requests_processing"
PREDICTED = "llamacpp:tokens_predicted_total"


@dataclass
class MemberStats:
    """What the supervisor scrapes from the member's /metrics (and request timings as a fallback)."""

    tokens_per_second: float | None = None
    requests_total: int = 0
    draft_tokens: int = 0  # from /metrics (llamacpp:spec_decode_*), when the build exports them
    draft_accepted: int = 0
    draft_steps: int = 0
    draft_per_pos: tuple[int, ...] = ()
    timings_draft_tokens: int = 0  # summed from responses' `timings`, the fallback
    timings_draft_accepted: int = 0

    def add_timings(self, timings: dict[str, object]) -> None:
        """Count a response's `timings.draft_n` / `draft_n_accepted` (for builds without the counters)."""
        drafted, accepted = timings.get("draft_n"), timings.get("draft_n_accepted")
        if isinstance(drafted, int) and isinstance(accepted, int):
            self.timings_draft_tokens += drafted
            self.timings_draft_accepted += accepted

    def counters(self) -> DraftCounters:
        """The cumulative draft counters the live tuner reads."""
        return DraftCounters(self.draft_steps, self.draft_tokens, self.draft_accepted, self.draft_per_pos)

    @property
    def draft_acceptance(self) -> float | None:
        if self.draft_tokens:
            return self.draft_accepted / self.draft_tokens
        if self.timings_draft_tokens:
            return self.timings_draft_accepted / self.timings_draft_tokens
        return None


def parse_member_metrics(text: str, stats: MemberStats) -> MemberStats:
    samples: dict[str, float] = {}
    per_pos: dict[int, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value) or sample.value < 0:
                # No figure of ours is infinite, NaN or negative: int() of +Inf raised OverflowError, which failed
                # the members for good, and an Infinity the dashboard's stream sent no browser can parse.
                continue
            if not sample.labels:
                samples[sample.name] = sample.value
            elif sample.name == DRAFT_ACCEPTED_PER_POS and sample.labels.get("position", "").isdigit():
                per_pos[int(sample.labels["position"])] = int(sample.value)
    if TOKENS_PER_SECOND in samples and samples[TOKENS_PER_SECOND] > 0:
        stats.tokens_per_second = samples[TOKENS_PER_SECOND]
    if DRAFT_TOKENS in samples:
        stats.draft_tokens = int(samples[DRAFT_TOKENS])
        stats.draft_accepted = int(samples.get(DRAFT_ACCEPTED, 0))
        stats.draft_steps = int(samples.get(DRAFT_STEPS, 0))
        stats.draft_per_pos = tuple(per_pos.get(i, 0) for i in range(max(per_pos) + 1)) if per_pos else ()
    return stats
