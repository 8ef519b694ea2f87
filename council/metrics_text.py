"""Read a llama-server's Prometheus `/metrics` into a member's stats."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from council.member import MemberStats

DRAFT_TOKENS = "llamacpp:spec_decode_num_draft_tokens_total"
DRAFT_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
TOKENS_PER_SECOND = "llamacpp:predicted_tokens_seconds"
REQUESTS = "llamacpp:requests_processing"
PREDICTED = "llamacpp:tokens_predicted_total"


def parse_member_metrics(text: str, stats: MemberStats) -> MemberStats:
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.labels:
                samples[sample.name] = sample.value
    if TOKENS_PER_SECOND in samples and samples[TOKENS_PER_SECOND] > 0:
        stats.tokens_per_second = samples[TOKENS_PER_SECOND]
    if DRAFT_TOKENS in samples:
        stats.draft_tokens = int(samples[DRAFT_TOKENS])
        stats.draft_accepted = int(samples.get(DRAFT_ACCEPTED, 0))
    return stats
