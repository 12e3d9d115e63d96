"""Data drift detection: per-feature tests chosen by type, effect sizes, a multivariate test,
multiple-testing correction across features, and sliding windows over a stream.

    detector = DriftDetector(reference_frame)          # fit once: sorts, bins, categories
    report = detector.test(current_frame)               # one window
    report.verdict                                      # "drift" | "no_drift" | "incomplete"

Numeric features get a two-sample Kolmogorov-Smirnov test (`ks.py`, p-values as scipy's),
categorical ones a chi-square test of homogeneity (`chi2.py`). The p-values of all tested
features form one family, corrected by Benjamini-Hochberg (default) or Bonferroni, because
a naive p < alpha per feature raises false alarms almost surely once there are many
features. Nothing is silently "no drift": bad input raises a `DriftInputError` naming the
column, or puts an explicit status on the feature, and a report with untested features says
"incomplete" rather than "no_drift".

Column labels: any label pandas accepts (integers from `pd.DataFrame(ndarray)`, tuples of a
MultiIndex, ...) is used by its `str()`, which is the feature's name in the report; two labels
with the same `str()` (duplicates, or `0` next to `"0"`) are refused, naming them.
Dates and times: datetime64 columns (naive or time-zone aware) and timedelta64 columns are
numeric features compared as seconds (since 1970-01-01 UTC for instants), so windows from
years that do not overlap are drift; NaT counts as a missing value (`invalid_values`), and a
naive column is never compared with an aware one (refused: the instants are ambiguous).
Complex columns are refused (casting to float would drop the imaginary part silently).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from reference.monitoring import correction, effect_sizes, ks
from reference.monitoring.chi2 import chi2_homogeneity
from reference.monitoring.mmd import MMDResult, mmd_permutation_test

NUMERIC, CATEGORICAL = "numeric", "categorical"
# dtype families: how a column's values are read (a datetime is tested as a NUMERIC feature)
DATETIME, DATETIME_TZ, TIMEDELTA = "datetime", "datetime_tz", "timedelta"
_EPOCH = {DATETIME: pd.Timestamp(0), DATETIME_TZ: pd.Timestamp(0, tz="UTC")}
_SECOND = pd.Timedelta(seconds=1)
OK, CONSTANT, INVALID_VALUES = "ok", "constant", "invalid_values"
TESTED_STATUSES = (OK, CONSTANT)


class DriftInputError(ValueError):
    """The windows cannot be compared as given (schema, dtypes, sizes)."""


@dataclass(frozen=True)
class FeatureResult:
    name: str
    kind: str  # numeric | categorical
    test: str  # ks | chi2
    status: str  # ok | constant (reference has one value; still tested) | invalid_values (not tested)
    detail: str = ""
    statistic: float = float("nan")
    p_value: float = float("nan")
    p_is_bound: bool = False  # p_value is an upper bound below ks.TAIL (see ks.py)
    p_adjusted: float = float("nan")
    drift: bool | None = None  # None: not tested
    psi: float = float("nan")
    wasserstein: float = float("nan")  # numeric only, in the feature's units (seconds for dates and times)

    @property
    def tested(self) -> bool:
        return self.status in TESTED_STATUSES


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureResult]
    alpha: float
    correction: str
    reference_rows: int
    current_rows: int
    ks_method: str
    multivariate: MMDResult | None = None

    @property
    def drifted(self) -> list[str]:
        return [f.name for f in self.features if f.drift]

    @property
    def untested(self) -> list[str]:
        return [f.name for f in self.features if not f.tested]

    @property
    def drift(self) -> bool:
        """Any feature drifted after correction (or the multivariate test rejected)."""
        multivariate = self.multivariate is not None and self.multivariate.pvalue <= self.alpha
        return bool(self.drifted) or multivariate

    @property
    def verdict(self) -> str:
        if self.drift:
            return "drift"
        return "incomplete" if self.untested else "no_drift"

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(f) for f in self.features]).set_index("name")


@dataclass
class _Schema:
    names: list[str]
    kinds: dict[str, str]  # how each feature is tested
    families: dict[str, str]  # what its dtype is (an integer column may be tested as categorical)
    dtypes: dict[str, str]
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)


class DriftDetector:
    """A fitted reference window; `test` compares a current window against it."""

    def __init__(self, reference: pd.DataFrame | np.ndarray, *, alpha: float = 0.05, correction: str = "bh",
                 categorical: Iterable[str] = (), ks_method: str = "auto", min_rows: int = 20,
                 psi_bins: int = 10, multivariate: bool = False, mmd_permutations: int = 200,
                 mmd_max_rows: int = 500, seed: int = 0) -> None:
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if correction not in CORRECTION_CHOICES:
            raise ValueError(f"correction must be one of {CORRECTION_CHOICES}, got {correction!r}")
        if ks_method not in ks.METHODS:
            raise ValueError(f"ks_method must be one of {ks.METHODS}, got {ks_method!r}")
        if min_rows < 2:
            raise ValueError(f"min_rows must be at least 2, got {min_rows}")
        self.alpha, self.correction, self.ks_method = alpha, correction, ks_method
        self.min_rows, self.psi_bins, self.seed = min_rows, psi_bins, seed
        self.multivariate = multivariate
        self.mmd_permutations, self.mmd_max_rows = mmd_permutations, mmd_max_rows
        frame = _named(as_frame(reference), "reference")
        _require_rows(frame, min_rows, "reference")
        self.schema = _infer_schema(frame, {str(c) for c in categorical})
        self.reference_rows = len(frame)
        numeric = _numeric_array(frame, self.schema.numeric, self.schema)
        self._reference_numeric = numeric if multivariate else None  # MMD needs the raw rows
        self._reference_invalid = _invalid_counts(numeric)
        usable = self._reference_invalid.sum(axis=1) == 0
        self._sorted = ks.SortedReference(numeric[:, usable]) if usable.any() else None
        self._sorted_index = np.cumsum(usable) - 1  # column of each numeric feature in _sorted
        self._categories = {name: _category_counts(frame[name]) for name in self.schema.categorical}

    def test(self, current: pd.DataFrame | np.ndarray) -> DriftReport:
        frame = _aligned(_named(as_frame(current, self.schema.names), "current"), self.schema)
        _require_rows(frame, self.min_rows, "current")
        results = {**self._numeric_results(frame), **self._categorical_results(frame)}
        features = _corrected([results[name] for name in self.schema.names], self.alpha, self.correction)
        multivariate = self._multivariate(frame, features) if self.multivariate else None
        return DriftReport(features, self.alpha, self.correction, self.reference_rows, len(frame),
                           self.ks_method, multivariate)

    def _numeric_results(self, frame: pd.DataFrame) -> dict[str, FeatureResult]:
        names = self.schema.numeric
        if not names:
            return {}
        current = _numeric_array(frame, names, self.schema)
        current_invalid = _invalid_counts(current)
        testable = (self._reference_invalid.sum(axis=1) == 0) & (current_invalid.sum(axis=1) == 0)
        results = {name: FeatureResult(name, NUMERIC, "ks", INVALID_VALUES,
                                       _invalid_detail(self._reference_invalid[i], current_invalid[i]))
                   for i, name in enumerate(names) if not testable[i]}
        if testable.any():
            assert self._sorted is not None
            columns = np.flatnonzero(testable)
            reference = self._sorted.subset(self._sorted_index[columns])
            stats = _numeric_statistics(reference, current[:, columns], self.ks_method, self.psi_bins)
            for k, i in enumerate(columns):
                constant = bool(stats.constant[k])
                results[names[i]] = FeatureResult(
                    names[i], NUMERIC, "ks", CONSTANT if constant else OK,
                    "reference window holds a single value" if constant else "",
                    float(stats.statistic[k]), float(stats.pvalue[k]), bool(stats.bounded[k]),
                    psi=float(stats.psi[k]), wasserstein=float(stats.wasserstein[k]))
        return results

    def _categorical_results(self, frame: pd.DataFrame) -> dict[str, FeatureResult]:
        results, tables = {}, {}
        for name in self.schema.categorical:
            missing = (int(self._categories[name].get(_MISSING, 0)), int(frame[name].isna().sum()))
            if any(missing):
                results[name] = FeatureResult(name, CATEGORICAL, "chi2", INVALID_VALUES,
                                              f"missing values: {missing[0]} in reference, {missing[1]} in current")
            else:
                tables[name] = CountTable.of(self._categories[name], _category_counts(frame[name]))
        if tables:
            width = max(len(t.reference) for t in tables.values())
            ref_counts = np.array([np.pad(t.reference, (0, width - len(t.reference))) for t in tables.values()])
            cur_counts = np.array([np.pad(t.current, (0, width - len(t.current))) for t in tables.values()])
            test = chi2_homogeneity(ref_counts, cur_counts)
            psi = effect_sizes.psi_from_counts(ref_counts, cur_counts)
            for k, (name, table) in enumerate(tables.items()):
                results[name] = FeatureResult(name, CATEGORICAL, "chi2", CONSTANT if table.constant else OK,
                                              table.detail, float(test.statistic[k]), float(test.pvalue[k]),
                                              psi=float(psi[k]))
        return results

    def _multivariate(self, frame: pd.DataFrame, features: list[FeatureResult]) -> MMDResult | None:
        """MMD over the tested numeric features (categorical ones are left to chi-square)."""
        tested = {f.name for f in features if f.tested}
        columns = [i for i, name in enumerate(self.schema.numeric) if name in tested]
        if not columns:
            return None
        current = _numeric_array(frame, [self.schema.numeric[i] for i in columns], self.schema)
        assert self._reference_numeric is not None
        return mmd_permutation_test(self._reference_numeric[:, columns], current, permutations=self.mmd_permutations,
                                    max_rows=self.mmd_max_rows, seed=self.seed)


@dataclass(frozen=True)
class CountTable:
    """One categorical feature's counts over the union of categories seen in either window."""

    reference: np.ndarray
    current: np.ndarray
    unseen: int  # categories only the current window has

    @classmethod
    def of(cls, reference: pd.Series, current: pd.Series) -> CountTable:
        categories = reference.index.union(current.index, sort=False)
        return cls(reference.reindex(categories, fill_value=0).to_numpy(),
                   current.reindex(categories, fill_value=0).to_numpy(),
                   len(current.index.difference(reference.index)))

    @property
    def constant(self) -> bool:
        return np.count_nonzero(self.reference) == 1

    @property
    def detail(self) -> str:
        notes = ["reference window holds a single value" if self.constant else "",
                 f"{self.unseen} categories unseen in reference" if self.unseen else ""]
        return "; ".join(note for note in notes if note)


CORRECTION_CHOICES = correction.CORRECTIONS
_MISSING = "__missing__"


@dataclass(frozen=True)
class NumericStatistics:
    statistic: np.ndarray
    pvalue: np.ndarray
    bounded: np.ndarray
    psi: np.ndarray
    wasserstein: np.ndarray
    constant: np.ndarray  # the reference column holds a single value


def _numeric_statistics(reference: ks.SortedReference, current: np.ndarray, method: str,
                        psi_bins: int) -> NumericStatistics:
    """KS, PSI and Wasserstein from one merge per block of columns."""
    n1, n2 = reference.rows, current.shape[0]
    keys = np.empty(reference.columns, dtype=np.int64)
    psi = np.empty(reference.columns)
    wasserstein = np.empty(reference.columns)
    constant = np.empty(reference.columns, dtype=bool)
    for columns, block in ks.merged_blocks(reference, current):
        keys[columns] = ks.extreme_key(block)
        wasserstein[columns] = effect_sizes.wasserstein_merged(block.values, block.key, n1, n2)
        psi[columns] = effect_sizes.psi_numeric(block.sorted_reference, block.sorted_current, psi_bins)
        constant[columns] = block.sorted_reference[:, 0] == block.sorted_reference[:, -1]
    test = ks.pvalues_from_keys(keys, reference, n2, method)
    return NumericStatistics(test.statistic, test.pvalue, test.bounded, psi, wasserstein, constant)


def _corrected(features: list[FeatureResult], alpha: float, method: str) -> list[FeatureResult]:
    """Adjust the tested features' p-values as one family and decide drift per feature."""
    pvalues = np.array([f.p_value if f.tested else np.nan for f in features])
    adjusted = correction.adjust(pvalues, method)
    return [replace(f, p_adjusted=float(a), drift=bool(a <= alpha)) if f.tested else f
            for f, a in zip(features, adjusted)]


def as_frame(table: pd.DataFrame | np.ndarray, names: Sequence[str] | None = None) -> pd.DataFrame:
    """A DataFrame view of the input; a 2-D array gets columns x0, x1, ... (or `names`)."""
    if isinstance(table, pd.DataFrame):
        return table
    array = np.asarray(table)
    if array.ndim != 2:
        raise DriftInputError(f"a window must be 2-D (rows, features), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise DriftInputError(f"a plain array must be numeric, got dtype {array.dtype}; use a DataFrame for "
                              "categorical features")
    columns = list(names) if names is not None and len(names) == array.shape[1] else \
        [f"x{i}" for i in range(array.shape[1])]
    return pd.DataFrame(array, columns=columns, copy=False)


def _named(frame: pd.DataFrame, which: str) -> pd.DataFrame:
    """The frame with every column label replaced by its str(); labels that would collide
    (duplicates, or 0 next to "0") are refused by name."""
    names = [str(c) for c in frame.columns]
    if len(set(names)) != len(names):
        seen: dict[str, list[object]] = {}
        for label, name in zip(frame.columns, names):
            seen.setdefault(name, []).append(label)
        clashes = {name: labels for name, labels in seen.items() if len(labels) > 1}
        raise DriftInputError(f"column names must be unique in the {which} window; these name more than one "
                              f"column: {', '.join(f'{n!r} ({labels!r})' for n, labels in clashes.items())}")
    if all(isinstance(c, str) for c in frame.columns):
        return frame
    return frame.set_axis(names, axis=1)


def _infer_schema(frame: pd.DataFrame, categorical: set[str]) -> _Schema:
    names = list(frame.columns)
    unknown = categorical - set(names)
    if unknown:
        raise DriftInputError(f"categorical columns {sorted(unknown)} are not in the reference")
    if not names:
        raise DriftInputError("the reference has no columns")
    families = {name: _family(frame[name]) for name in names}
    kinds = {name: CATEGORICAL if name in categorical else
             NUMERIC if families[name] in _EPOCH or families[name] == TIMEDELTA else families[name]
             for name in names}
    return _Schema(names, kinds, families, {n: str(frame[n].dtype) for n in names},
                   [n for n in names if kinds[n] == NUMERIC], [n for n in names if kinds[n] == CATEGORICAL])


def _family(column: pd.Series) -> str:
    """How a column's values are read: numbers, instants (naive or aware), durations, or categories."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return DATETIME_TZ
    if pd.api.types.is_datetime64_dtype(column):
        return DATETIME
    if pd.api.types.is_timedelta64_dtype(column):
        return TIMEDELTA
    if pd.api.types.is_complex_dtype(column):
        raise DriftInputError(f"column {column.name!r} is complex ({column.dtype}); compare its real and imaginary "
                              "parts (or its modulus) as separate columns")
    if pd.api.types.is_bool_dtype(column) or not pd.api.types.is_numeric_dtype(column):
        return CATEGORICAL
    return NUMERIC


def _aligned(frame: pd.DataFrame, schema: _Schema) -> pd.DataFrame:
    """The current window's columns in the reference's order, with matching kinds."""
    names = list(frame.columns)
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in names if n not in schema.kinds]
    if missing or extra:
        raise DriftInputError(f"columns differ from the reference: missing {missing}, unexpected {extra}")
    frame = frame[schema.names]
    for name in schema.names:
        if _family(frame[name]) != schema.families[name]:
            raise DriftInputError(f"column {name!r} has dtype {schema.dtypes[name]} ({schema.families[name]}) in "
                                  f"the reference but {frame[name].dtype} in the current window")
    return frame


def _numeric_array(frame: pd.DataFrame, names: list[str], schema: _Schema) -> np.ndarray:
    """(rows, features) float64; dates and times as seconds, NaT as NaN."""
    if not names:
        return np.empty((len(frame), 0))
    times = {name: _seconds(frame[name], schema.families[name]) for name in names
             if schema.families[name] != NUMERIC}
    return frame[names].assign(**times).to_numpy(dtype=np.float64, na_value=np.nan)


def _seconds(column: pd.Series, family: str) -> pd.Series:
    """Instants as seconds since 1970-01-01 UTC (aware ones converted), durations as seconds."""
    return (column - _EPOCH[family]) / _SECOND if family in _EPOCH else column / _SECOND


def _require_rows(frame: pd.DataFrame, minimum: int, which: str) -> None:
    if len(frame) == 0:
        raise DriftInputError(f"the {which} window is empty")
    if len(frame) < minimum:
        raise DriftInputError(f"the {which} window has {len(frame)} rows; at least {minimum} are needed "
                              "(min_rows) for a test worth reading")


def _invalid_counts(values: np.ndarray) -> np.ndarray:
    """(features, 2): NaN and inf counts per column."""
    return np.stack([np.isnan(values).sum(axis=0), np.isinf(values).sum(axis=0)], axis=1)


def _invalid_detail(reference: np.ndarray, current: np.ndarray) -> str:
    return (f"reference has {reference[0]} NaN, {reference[1]} inf; "
            f"current has {current[0]} NaN, {current[1]} inf")


def _category_counts(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), _MISSING).value_counts(sort=False)

