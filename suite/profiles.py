"""Measurement budgets per profile, overridable from a TOML config file.

quick: the CPU profile of `nox -s bench-cpu` (whole suite in minutes);
full: longer warm-up and more samples for published numbers;
gpu: the full budget on CUDA, run by `nox -s bench-gpu`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from suite.errors import SuiteError
from suite.schema import read_text


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    warmup_calls: PositiveInt = Field(description="warm-up calls, at least")
    warmup_s: float = Field(ge=0, description="warm-up seconds, at least")
    min_samples: PositiveInt
    max_samples: PositiveInt
    max_time_s: PositiveFloat = Field(description="stop sampling after this once min_samples are in")
    threads: int = Field(default=0, ge=0, description="torch intra-op threads; 0 = the CPUs free now, less one")
    seed: int = 0
    replicates: PositiveInt = Field(default=3, description="process runs per (scenario, params), interleaved")


# The quick budget per run is smaller than one long run: three short process runs say more
# about a number's uncertainty than one long one (the process run is the unit of replication).
PROFILES: dict[str, Budget] = {
    "quick": Budget(warmup_calls=3, warmup_s=0.2, min_samples=20, max_samples=400, max_time_s=0.6, replicates=3),
    "full": Budget(warmup_calls=10, warmup_s=1.0, min_samples=100, max_samples=5000, max_time_s=5.0, replicates=5),
    "gpu": Budget(warmup_calls=10, warmup_s=1.0, min_samples=100, max_samples=5000, max_time_s=3.0, replicates=3),
}


def load_budget(profile: str, config: Path | None = None) -> Budget:
    """The profile's budget, with `[profiles.<name>]` from a TOML config file laid over it."""
    if profile not in PROFILES:
        raise SuiteError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}")
    budget = PROFILES[profile]
    if config is None:
        return budget
    try:
        data = tomllib.loads(read_text(config))
    except tomllib.TOMLDecodeError as exc:
        raise SuiteError(f"{config}: malformed TOML ({exc})") from None
    unknown = set(data) - {"profiles"}
    if unknown:
        raise SuiteError(f"{config}: unknown top-level keys {sorted(unknown)}; only [profiles.*]")
    overrides = data.get("profiles", {}).get(profile, {})
    try:
        return Budget.model_validate({**budget.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SuiteError(f"{config}: profiles.{profile}.{field}: {first['msg']}") from None
