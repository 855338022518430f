"""behaviour: CheckList-style behavioural checks (Ribeiro et al., ACL 2020) that gate a model.

A dataset's checks are one YAML file (gate.behaviour_checks; `auto` reads
data/checks/<data.name>.yaml when it exists). Each check has a name, a type, a floor (the
pass rate a model must reach) and its cases:

- mft (minimum functionality): `examples` of {text, label}; a case passes when the model
  predicts the label;
- inv (invariance): `texts` and/or `sample: N` (N test rows, drawn with `seed`) under a
  `perturbation` (typos, names, punctuation); a case passes when the predicted label of the
  edited text is the original's;
- dir (direction): `pairs` of {text, edited}, or `texts` under a `perturbation` (negate), and
  `expect`: flip (the predicted label changes), up:<label> or down:<label> (the edited
  text's probability of the label is higher, or lower).

A perturbation that leaves a text as it was is not a case (a name swap of a text without a
name). The predictions are the runtime's (`bundle_predict`: tuneops.runtime, the file the
gate judges), so the candidate and the champion are scored the same way.

Which check types, perturbations and example keys apply is the task's: its
`behaviour_module` names a module whose CHECKER (a `Checker`) validates a suite and runs it
on a bundle. This module's LABEL_CHECKS are the checks above, for tasks with one label per
text; pipeline/tasks/token_behaviour.py has the entity checks of token classification.

The perturbations are written here by hand, a few seeded lines each: the `checklist`
package (0.0.11, 2021) needs spaCy and a spaCy English model, which is not on PyPI (it is
downloaded at run time, which these machines cannot), and pins old dependencies; nlpaug's
character augmenters would do the typos, but bring requests and gdown for one swap of two
letters. Each perturbation is seeded by the check's seed and the text itself, so a text
gets the same edit in any order, for the candidate and the champion alike.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tuneops.errors import ConfigError

# Probabilities [len(texts), len(labels)], each row in `labels`' order.
Predict = Callable[[list[str]], np.ndarray]

INVARIANT = ("typos", "names", "punctuation", "swap_entity")
DIRECTED = ("negate",)
FAILURES_SHOWN = 3  # failing cases kept per check for the reports
KEY = "gate.behaviour_checks"

# First names swapped by the `names` perturbation when the file lists none (`names:`):
# common English first names, as CheckList's lexicon has them.
NAMES = (
    "James", "John", "Robert", "Michael", "David", "William", "Richard", "Thomas", "Tom",
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Susan", "Jessica", "Sarah", "Anna",
)  # fmt: skip


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EntitySpec(_Spec):
    """An entity an mft example expects: its type and its words, as the text has them."""

    type: str = Field(min_length=1)
    text: str = Field(min_length=1)


class Example(_Spec):
    """{text, label} for label checks, {text, entities} for entity checks (the task's
    checker says which)."""

    text: str = Field(min_length=1)
    label: str | None = None
    entities: tuple[EntitySpec, ...] | None = None  # [] : a text with no entity


class Pair(_Spec):
    text: str = Field(min_length=1)
    edited: str = Field(min_length=1)


class CheckSpec(_Spec):
    """One check of the file; which keys a type takes is checked in `_shape`."""

    name: str = Field(pattern=r"^[a-z0-9_]+$")  # also the metric behaviour.<name>_pass_rate
    type: Literal["mft", "inv", "dir"]
    floor: float = Field(ge=0, le=1)
    description: str = ""
    examples: tuple[Example, ...] = ()
    texts: tuple[str, ...] = ()
    sample: int | None = Field(None, ge=1)
    pairs: tuple[Pair, ...] = ()
    perturbation: Literal["typos", "names", "punctuation", "negate", "swap_entity"] | None = None
    types: tuple[str, ...] = ()  # swap_entity: the entity types it swaps (none: every type)
    expect: str | None = None
    seed: int = 0

    @field_validator("expect")
    @classmethod
    def _expectation(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"flip|(up|down):.+", value):
            raise ValueError(f"expected flip, up:<label> or down:<label>, found {value!r}")
        return value

    @model_validator(mode="after")
    def _shape(self) -> CheckSpec:
        allowed = {
            "mft": {"examples"},
            # examples and types: entity checks' (the task's checker refuses what it cannot run)
            "inv": {"texts", "sample", "perturbation", "examples", "types"},
            "dir": {"texts", "pairs", "perturbation", "expect"},
        }[self.type]
        keys = ("examples", "texts", "sample", "pairs", "perturbation", "expect", "types")
        given = {k for k in keys if getattr(self, k) not in ((), None)}
        if given - allowed:
            article = "a" if self.type == "dir" else "an"
            raise ValueError(f"{article} {self.type} check takes no {sorted(given - allowed)}")
        if self.type == "mft" and not self.examples:
            raise ValueError("an mft check needs `examples` ({text, label} or {text, entities})")
        if self.type == "inv":
            if self.perturbation not in INVARIANT:
                raise ValueError(f"an inv check needs `perturbation`, one of {list(INVARIANT)}")
            if not self.texts and not self.examples and self.sample is None:
                raise ValueError("an inv check needs `texts`, `examples` or `sample` (test rows)")
        if self.type == "dir":
            if self.expect is None:
                raise ValueError("a dir check needs `expect` (flip, up:<label> or down:<label>)")
            if bool(self.texts) == bool(self.pairs):
                raise ValueError("a dir check needs `pairs`, or `texts` with a `perturbation`")
            if self.pairs and self.perturbation is not None:
                raise ValueError("a dir check's `pairs` are edited already: no `perturbation`")
            if self.texts and self.perturbation not in DIRECTED:
                raise ValueError(f"a dir check's `perturbation` is one of {list(DIRECTED)}")
        return self

    @property
    def expected_label(self) -> str | None:
        """dir up:/down:'s label (None for flip and other types)."""
        return self.expect.split(":", 1)[1] if self.expect and ":" in self.expect else None


class SuiteSpec(_Spec):
    names: tuple[str, ...] = Field(NAMES, min_length=2)
    checks: tuple[CheckSpec, ...] = Field(min_length=1)

    @field_validator("checks")
    @classmethod
    def _unique(cls, checks: tuple[CheckSpec, ...]) -> tuple[CheckSpec, ...]:
        seen: set[str] = set()
        for check in checks:
            if check.name in seen:
                raise ValueError(f"the name {check.name!r} is used twice")
            seen.add(check.name)
        return checks


@dataclass(frozen=True)
class Suite:
    """A loaded checks file: where it is (messages name it), its checks, and the task's
    checker that runs them (LABEL_CHECKS when none is given)."""

    path: Path
    names: tuple[str, ...]
    checks: tuple[CheckSpec, ...]
    checker: Checker | None = None

    def key(self, index: int, name: str = "") -> str:
        """How messages name a check's key: checks[2] (inv_typos)."""
        return f"checks[{index}]" + (f" ({name})" if name else "")

    def refuse(self, index: int, key: str, message: str) -> ConfigError:
        """The ConfigError for one check's key: <file>: checks[2] (inv_typos).key: message."""
        where = self.key(index, self.checks[index].name) + (f".{key}" if key else "")
        return ConfigError(f"{self.path}: {where}: {message} ({KEY}; docs/configuration.md)")


class Checker(Protocol):
    """What a task's behavioural checks are: the check types and perturbations that apply
    to it, what an mft example names, what else it refuses, and how a suite runs."""

    @property
    def types(self) -> tuple[str, ...]: ...

    @property
    def perturbations(self) -> tuple[str, ...]: ...

    @property
    def example_key(self) -> str:
        """What an mft example names: "label" or "entities"."""

    def refuse(self, suite: Suite, task: str) -> None:
        """ConfigError for a check of `suite` that the task cannot run, beyond the above."""

    def run(self, suite: Suite, bundle: Any, split: Any) -> list[CheckResult]:
        """Every check on one bundle, the sampled cases drawn from `split` (TestSplit)."""


@dataclass(frozen=True)
class Case:
    text: str
    edited: str | None = None  # inv, dir
    label: str | None = None  # mft


@dataclass
class Failure:
    text: str
    edited: str | None
    expected: str  # the label, "same label", "flip", "up:positive"
    got: str  # the predicted label (of the edited text, for inv and dir)


@dataclass
class CheckResult:
    """One check's pass rate on one model, and a few failing cases."""

    name: str
    type: str
    floor: float
    cases: int
    passed: int
    pass_rate: float
    key: str  # the floor's key in the file: checks[2].floor
    file: str
    what: str = ""  # "negate, expect flip", "typos"
    description: str = ""
    failures: list[Failure] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        suite: Suite,
        index: int,
        check: CheckSpec,
        cases: int,
        failures: list[Failure],
        what: str,
    ) -> CheckResult:
        """The result of `suite`'s check `index` over `cases` cases of which `failures`
        failed (the first FAILURES_SHOWN kept), for every task's checker."""
        passed = cases - len(failures)
        return cls(
            check.name,
            check.type,
            check.floor,
            cases,
            passed,
            passed / cases,
            f"{suite.key(index)}.floor",
            str(suite.path),
            what,
            check.description,
            failures[:FAILURES_SHOWN],
        )


def checks_path(setting: str | None, data_name: str, root: Path) -> Path | None:
    """The checks file gate.behaviour_checks names: auto is data/checks/<data.name>.yaml
    when it exists (else none), a path (relative to the project root) must exist, null is
    none."""
    if setting is None:
        return None
    if setting == "auto":
        found = root / "data" / "checks" / f"{data_name}.yaml"
        return found if found.is_file() else None
    path = root / setting
    if not path.is_file():
        raise ConfigError(
            f"{KEY}: {path} not found; give the path of a checks file (relative to the project "
            "root), auto (data/checks/<data.name>.yaml when it exists) or null (no checks)"
        )
    return path


def load_for(setting: str | None, data_name: str, root: Path, task: Any) -> Suite | None:
    """The suite gate.behaviour_checks names for `task`, or None; ConfigError for a task
    that has no behavioural checks, or a check that does not apply to it."""
    path = checks_path(setting, data_name, root)
    if path is None:
        return None
    if task.behaviour_module is None:
        raise ConfigError(
            f"{KEY}: {path}: behavioural checks are for tasks that have a checker; "
            f"{task.name} has none (remove the file or set {KEY} to null)"
        )
    checker = import_module(task.behaviour_module).CHECKER
    return load_suite(path, checker, task.name)


def load_suite(path: Path, checker: Checker | None = None, task: str = "this task") -> Suite:
    """Read and validate a checks file for `checker` (LABEL_CHECKS by default; `task` is
    the name messages give it); ConfigError naming the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    try:
        spec = SuiteSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(raw, e['loc'])}: {_message(e)}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems} ({KEY}; docs/configuration.md)") from exc
    suite = Suite(path, spec.names, spec.checks, checker)
    applies(suite, checker or LABEL_CHECKS, task)
    return suite


def applies(suite: Suite, checker: Checker, task: str) -> None:
    """ConfigError for the first check of `suite` that `checker` cannot run: its type,
    its perturbation, its examples' key, then the checker's own refusals."""
    for index, check in enumerate(suite.checks):
        if check.type not in checker.types:
            raise suite.refuse(
                index,
                "type",
                f"{'an' if check.type[0] in 'aeiou' else 'a'} {check.type} check does not apply "
                f"to {task} (its checks: {', '.join(checker.types)}); remove the check",
            )
        if check.perturbation is not None and check.perturbation not in checker.perturbations:
            raise suite.refuse(
                index,
                "perturbation",
                f"{check.perturbation} does not apply to {task} (its perturbations: "
                f"{', '.join(checker.perturbations)})",
            )
        for i, example in enumerate(check.examples):
            key = checker.example_key
            given = {k for k in ("label", "entities") if getattr(example, k) is not None}
            if given != {key}:
                shape = "{type, text} each, [] for none" if key == "entities" else "a label"
                raise suite.refuse(
                    index, f"examples[{i}]", f"{task}'s mft examples name `{key}` ({shape})"
                )
    checker.refuse(suite, task)


def _where(raw: Any, loc: tuple[Any, ...]) -> str:
    """The key as the file spells it: checks[1] (its name).floor, examples[0].label."""
    if not loc:
        return "(the top level)"
    text = ""
    for i, part in enumerate(loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        if i == 1 and loc[0] == "checks" and isinstance(part, int):
            found = raw["checks"][part] if isinstance(raw, dict) else None
            if isinstance(found, dict) and "name" in found:
                text += f" ({found['name']})"
    return text


def _message(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def perturb(kind: str, text: str, seed: int, names: tuple[str, ...] = NAMES) -> str:
    """`text` under one perturbation, seeded by `seed` and the text (the same edit in any
    order); the text unchanged where the perturbation finds nothing to edit."""
    rng = np.random.default_rng([seed, zlib.crc32(text.encode("utf-8"))])
    if kind == "typos":
        return typo(text, rng)
    if kind == "names":
        return _swap_names(text, rng, names)
    if kind == "punctuation":
        return _punctuation(text)
    if kind == "negate":
        return _NEGATABLE.sub(r"\1 not", text, count=1)
    raise ValueError(f"unknown perturbation {kind!r}")


def typo(text: str, rng: np.random.Generator) -> str:
    """Two adjacent letters of one word swapped (CheckList's Perturb.add_typos, one typo)."""
    spots = [
        i
        for i in range(len(text) - 1)
        if text[i].isalpha() and text[i + 1].isalpha() and text[i] != text[i + 1]
    ]
    if not spots:
        return text
    i = spots[int(rng.integers(len(spots)))]
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _swap_names(text: str, rng: np.random.Generator, names: tuple[str, ...]) -> str:
    """Each first name of `names` in the text (whole words) replaced by another one of the
    list, the same one at every occurrence (CheckList's Perturb.change_names, without spaCy)."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    found = list(dict.fromkeys(pattern.findall(text)))
    if not found:
        return text
    others = [n for n in names if n not in found]
    chosen = rng.choice(len(others), size=min(len(found), len(others)), replace=False)
    swap: dict[str, str] = dict(zip(found, (others[int(i)] for i in chosen), strict=False))

    def swapped(match: re.Match[str]) -> str:
        name = str(match.group(1))
        return swap.get(name, name)

    return pattern.sub(swapped, text)


def _punctuation(text: str) -> str:
    """Trailing punctuation removed, or a full stop added where there is none (CheckList's
    Perturb.punctuation)."""
    stripped = text.rstrip()
    bare = stripped.rstrip(".!?")
    return bare if bare != stripped else stripped + "."


# The first is/was/are/were: "The plot is thin." -> "The plot is not thin."
_NEGATABLE = re.compile(r"\b(is|was|are|were)\b(?! not\b)", re.IGNORECASE)


def cases(suite: Suite, check: CheckSpec, test_texts: list[str]) -> list[Case]:
    """A check's cases; inv's `sample` draws from `test_texts` (the current test split) with
    the check's seed. Edits that change nothing are left out."""
    if check.type == "mft":
        return [Case(e.text, label=e.label) for e in check.examples]
    if check.pairs:
        return [Case(p.text, edited=p.edited) for p in check.pairs]
    texts = list(check.texts) + [test_texts[i] for i in sampled(check, len(test_texts))]
    assert check.perturbation is not None  # _shape: inv and dir-with-texts have one
    edited = [(t, perturb(check.perturbation, t, check.seed, suite.names)) for t in texts]
    return [Case(t, edited=e) for t, e in edited if e != t]


def sampled(check: CheckSpec, rows: int) -> list[int]:
    """The test rows (indices, ascending) an inv check's `sample` draws with its seed."""
    if check.sample is None or not rows:
        return []
    rng = np.random.default_rng(check.seed)
    picked = rng.choice(rows, size=min(check.sample, rows), replace=False)
    return [int(i) for i in sorted(picked)]


def evaluate(
    suite: Suite, predict: Predict, labels: list[str], test_texts: list[str]
) -> list[CheckResult]:
    """Every check's pass rate under `predict` (probabilities in `labels`' order). Each
    check's texts are predicted in a call of their own: int8 dynamic quantisation scales
    activations per batch, so a text's logits depend on its batch, and one check's rate must
    not move when another check is added. ConfigError for a label the model does not have,
    or a check that has no case."""
    built = [cases(suite, check, test_texts) for check in suite.checks]
    for index, (check, found) in enumerate(zip(suite.checks, built, strict=True)):
        _check_labels(suite, index, check, labels)
        if not found:
            raise ConfigError(
                f"{suite.path}: {suite.key(index, check.name)}: no case: its "
                f"{check.perturbation} perturbation changes none of its texts; list texts it "
                "can edit (for names: texts with a first name of `names`)"
            )
    return [
        _result(suite, index, check, found, _predicted(predict, found), labels)
        for index, (check, found) in enumerate(zip(suite.checks, built, strict=True))
    ]


def _predicted(predict: Predict, found: list[Case]) -> dict[str, np.ndarray]:
    """Each text of the cases (originals and edits) -> its probabilities, in one call."""
    texts = list(dict.fromkeys(t for c in found for t in (c.text, c.edited) if t is not None))
    return dict(zip(texts, predict(texts), strict=True))


def _check_labels(suite: Suite, index: int, check: CheckSpec, labels: list[str]) -> None:
    named = [(f"examples[{i}].label", e.label) for i, e in enumerate(check.examples)]
    if check.expected_label is not None:
        named.append(("expect", check.expected_label))
    for key, label in named:
        if label not in labels:
            raise ConfigError(
                f"{suite.path}: {suite.key(index, check.name)}.{key}: {label!r} is not a label "
                f"of the model ({', '.join(labels)})"
            )


def _result(
    suite: Suite,
    index: int,
    check: CheckSpec,
    found: list[Case],
    probabilities: dict[str, np.ndarray],
    labels: list[str],
) -> CheckResult:
    failures = []
    for case in found:
        before = probabilities[case.text]
        after = probabilities[case.edited] if case.edited is not None else before
        got = labels[int(np.argmax(after))]
        if check.type == "mft":
            ok, expected = got == case.label, str(case.label)
        elif check.type == "inv":
            ok, expected = int(np.argmax(after)) == int(np.argmax(before)), "same label"
        else:
            ok, expected = _direction(str(check.expect), before, after, labels), str(check.expect)
        if not ok:
            failures.append(Failure(case.text, case.edited, expected, got))
    what = ", ".join(
        p for p in (check.perturbation, f"expect {check.expect}" if check.expect else None) if p
    )
    return CheckResult.of(suite, index, check, len(found), failures, what)


def _direction(expect: str, before: np.ndarray, after: np.ndarray, labels: list[str]) -> bool:
    if expect == "flip":
        return int(np.argmax(after)) != int(np.argmax(before))
    way, label = expect.split(":", 1)
    i = labels.index(label)
    return bool(after[i] > before[i]) if way == "up" else bool(after[i] < before[i])


def bundle_predict(bundle: Any) -> Predict:
    """The runtime's probabilities (tuneops.runtime: the bundle's model file, its window
    and temperature) in the bundle's label order."""

    def predict(texts: list[str]) -> np.ndarray:
        rows = bundle.predict(texts, batch_size=64)
        return np.array([[p.probabilities[label] for label in bundle.labels] for p in rows])

    return predict


@dataclass(frozen=True)
class LabelChecks:
    """The checks of a task with one label per text (text classification)."""

    types: tuple[str, ...] = ("mft", "inv", "dir")
    perturbations: tuple[str, ...] = ("typos", "names", "punctuation", "negate")
    example_key: str = "label"

    def refuse(self, suite: Suite, task: str) -> None:
        for index, check in enumerate(suite.checks):
            extra = [k for k in ("examples", "types") if check.type == "inv" and getattr(check, k)]
            if extra:
                raise suite.refuse(index, "", f"an inv check takes no {extra}")

    def run(self, suite: Suite, bundle: Any, split: Any) -> list[CheckResult]:
        return evaluate(suite, bundle_predict(bundle), list(bundle.labels), split.texts)


LABEL_CHECKS = LabelChecks()
CHECKER = LABEL_CHECKS  # a task's behaviour_module names the module whose CHECKER it runs


def run(suite: Suite, bundle: Any, split: Any) -> list[CheckResult]:
    """Every check on one bundle (its default model file), by the suite's checker; the
    sampled cases are drawn from `split` (the current TestSplit)."""
    return (suite.checker or LABEL_CHECKS).run(suite, bundle, split)


def rates(results: list[CheckResult]) -> dict[str, float]:
    return {r.name: r.pass_rate for r in results}


def metrics(results: list[CheckResult], prefix: str = "") -> dict[str, float]:
    """behaviour.<check>_pass_rate per check (after `prefix`: champion.)."""
    return {f"{prefix}behaviour.{r.name}_pass_rate": r.pass_rate for r in results}
