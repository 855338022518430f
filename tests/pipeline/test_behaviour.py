"""Behavioural checks (CheckList style): the YAML, the perturbations, and the gate they feed,
judged with real prediction functions: deterministic keyword classifiers and the tiny model's
exported bundle through the runtime."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import behaviour
from pipeline.behaviour import CheckResult, Suite, checks_path, evaluate, load_suite, perturb
from pipeline.gate import ChampionComparison, GateInputs, gate, write_reports
from tests.conftest import REPO, TEXT
from tuneops.config import GateConfig
from tuneops.errors import ConfigError

LABELS = ["negative", "positive"]
GOOD = {"good", "great", "wonderful", "fun", "brilliant", "moving", "recommended"}


def keywords(texts: list[str]) -> np.ndarray:
    """positive when a text holds a word of GOOD, else negative; blind to "not"."""
    rows = []
    for text in texts:
        good = bool(GOOD & set(re.findall(r"[a-z]+", text.lower())))
        rows.append([0.0, 1.0] if good else [1.0, 0.0])
    return np.array(rows)


def negation_aware(texts: list[str]) -> np.ndarray:
    """keywords, with "not" flipping the label: the model a negation check expects."""
    flipped = [" not " in f" {text.lower()} " for text in texts]
    rows = keywords(texts)
    return np.where(np.array(flipped)[:, None], rows[:, ::-1], rows)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "checks.yaml"
    path.write_text(text, encoding="utf-8")
    return path


NEGATION = """
checks:
  - name: mft_plain
    type: mft
    floor: 1.0
    examples:
      - {text: "A good film.", label: positive}
      - {text: "A dull film.", label: negative}
  - name: dir_negation
    type: dir
    floor: 0.8
    perturbation: negate
    expect: flip
    texts: ["The acting is good.", "The plot was great fun.", "The songs are wonderful."]
"""


def test_the_shipped_movie_sentiment_checks_load_and_hold_every_check_type() -> None:
    path = REPO / "data" / "checks" / "movie_sentiment.yaml"
    suite = load_suite(path)
    assert {c.type for c in suite.checks} == {"mft", "inv", "dir"}
    assert {c.perturbation for c in suite.checks if c.type == "inv"} == {
        "typos",
        "names",
        "punctuation",
    }
    # Every label it names is one the bundled data has (pipeline/fetch_data.py).
    result = evaluate(suite, keywords, LABELS, ["A good film.", "Tom Hanks is dull."] * 30)
    assert [r.name for r in result] == [c.name for c in suite.checks]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("checks: [", r"not valid YAML"),
        (
            "checks:\n  - {name: a, type: mft, floor: 1.5, examples: [{text: x, label: y}]}\n",
            r"checks\[0\] \(a\)\.floor: Input should be less than or equal to 1",
        ),
        (
            "checks:\n  - {name: a, type: mft, flor: 0.5, examples: [{text: x, label: y}]}\n",
            r"checks\[0\] \(a\)\.flor: Extra inputs are not permitted",
        ),
        (
            "checks:\n  - {name: ok, type: mft, floor: 0.5, examples: [{text: x, label: y}]}\n"
            "  - {name: b, type: inv, floor: 0.5, texts: [x]}\n",
            r"checks\[1\] \(b\): an inv check needs `perturbation`",
        ),
        (
            "checks:\n  - {name: a, type: dir, floor: 0.5, texts: [x], perturbation: negate, "
            "expect: sideways}\n",
            r"checks\[0\] \(a\)\.expect: expected flip, up:<label> or down:<label>",
        ),
        (
            "checks:\n  - {name: a, type: mft, floor: 0.5, examples: [{text: x, label: y}]}\n"
            "  - {name: a, type: mft, floor: 0.5, examples: [{text: x, label: y}]}\n",
            r"checks: the name 'a' is used twice",
        ),
    ],
)
def test_a_bad_checks_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + r": .*" + message):
        load_suite(path)


def test_a_label_the_model_does_not_have_is_refused_naming_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "checks:\n  - name: a\n    type: mft\n    floor: 0.5\n    examples:\n"
        "      - {text: fine, label: positive}\n      - {text: bad, label: postive}\n",
    )
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{path}: checks[0] (a).examples[1].label: 'postive' is not a label"),
    ):
        evaluate(load_suite(path), keywords, LABELS, [])


def test_perturbations_are_seeded_and_change_only_what_they_name() -> None:
    text = "The performances are wonderful and the story is moving"
    typo = perturb("typos", text, 0)
    assert typo == perturb("typos", text, 0)  # the same text and seed: the same typo
    assert typo != text and len(typo) == len(text)
    changed = [i for i, (a, b) in enumerate(zip(text, typo, strict=True)) if a != b]
    assert len(changed) == 2 and changed[1] == changed[0] + 1  # two adjacent letters swapped
    assert typo[changed[0]] == text[changed[1]] and typo[changed[1]] == text[changed[0]]
    assert {perturb("typos", text, seed) for seed in range(20)} != {typo}  # seeds differ

    names = ("Anna", "Tom", "Maria", "James")
    swapped = perturb("names", "Tom and Anna save the film; Tom shines.", 3, names)
    assert swapped == perturb("names", "Tom and Anna save the film; Tom shines.", 3, names)
    first, second = swapped.split()[0], swapped.split()[2]
    assert first in names and second in names and first != "Tom" and second != "Anna"
    assert swapped.endswith(f"; {first} shines.")  # every occurrence becomes the same name
    assert perturb("names", "Tommy is fine", 0, names) == "Tommy is fine"  # whole words only

    assert perturb("punctuation", "A fine film", 0) == "A fine film."
    assert perturb("punctuation", "A fine film!!", 0) == "A fine film"
    assert perturb("negate", "The plot is thin.", 0) == "The plot is not thin."
    assert perturb("negate", "Actors WERE dull", 0) == "Actors WERE not dull"
    assert perturb("negate", "No verb here", 0) == "No verb here"


def test_invariance_on_a_seeded_sample_of_the_test_split_is_deterministic(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "checks:\n  - {name: inv_typos, type: inv, floor: 0.5, perturbation: typos, sample: 5, "
        "seed: 7}\n",
    )
    test = [f"a good film number {i}" if i % 2 else f"a dull film number {i}" for i in range(40)]
    suite = load_suite(path)
    cases = behaviour.cases(suite, suite.checks[0], test)
    assert cases == behaviour.cases(load_suite(path), suite.checks[0], list(test))
    assert len({c.text for c in cases}) == 5 and {c.text for c in cases} <= set(test)
    (result,) = evaluate(suite, keywords, LABELS, test)
    # A typo inside "good" makes the keyword model say negative: those cases fail, only those.
    kept = sum(("good" in c.text) == ("good" in str(c.edited)) for c in cases)
    assert (result.cases, result.passed) == (5, kept)


def verdict_for(results: list[CheckResult], champion: dict[str, float] | None = None) -> Any:
    comparison = (
        ChampionComparison("3", {"test_macro_f1": 0.9}, 0.0, -0.01, 0.01, 0.95, 1000)
        if champion is not None
        else None
    )
    if comparison is not None:
        comparison.behaviour = champion
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False)
    inputs = GateInputs(
        metrics={"test_macro_f1": 0.9},
        per_class={},
        labels=LABELS,
        primary_metric="test_macro_f1",
        primary_metric_label="macro-F1",
        comparison=comparison,
        behaviour=results,
    )
    return gate(cfg, inputs)


def test_a_candidate_blind_to_negation_is_rejected_naming_the_check_rate_floor_and_key(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, NEGATION)
    suite = load_suite(path)
    blind = evaluate(suite, keywords, LABELS, [])
    aware = evaluate(suite, negation_aware, LABELS, [])
    assert [(r.name, r.cases, r.passed) for r in blind] == [
        ("mft_plain", 2, 2),
        ("dir_negation", 3, 0),
    ]
    assert [(r.name, r.cases, r.passed) for r in aware] == [
        ("mft_plain", 2, 2),
        ("dir_negation", 3, 3),
    ]

    rejected = verdict_for(blind, champion={"mft_plain": 1.0, "dir_negation": 1.0})
    assert not rejected.passed
    assert rejected.failed_checks == ["behaviour:dir_negation"]
    (found,) = [c for c in rejected.checks if c.name == "behaviour:dir_negation"]
    assert (found.value, found.threshold) == (0.0, 0.8)
    assert found.detail.startswith(
        "dir (negate, expect flip): 0 of 3 cases pass (0.0000) vs floor 0.8; champion v3 1.0000"
    )
    assert "'The acting is good.' -> 'The acting is not good.': positive, expected flip" in (
        found.detail
    )
    assert found.detail.endswith(f"the floor is {path}: checks[1].floor")
    assert "behaviour:dir_negation: dir (negate" in rejected.summary()

    passed = verdict_for(aware)
    assert passed.passed, passed.summary()
    assert [c.name for c in passed.checks][-2:] == ["behaviour:mft_plain", "behaviour:dir_negation"]


def test_direction_up_and_down_compare_the_probability_of_the_label(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "checks:\n  - name: more_positive\n    type: dir\n    floor: 1.0\n    expect: up:positive\n"
        "    pairs:\n      - {text: 'A film.', edited: 'A film. Highly recommended.'}\n"
        "      - {text: 'A good film.', edited: 'A good film, great fun.'}\n",
    )

    def graded(texts: list[str]) -> np.ndarray:
        good = np.array([len(GOOD & set(re.findall(r"[a-z]+", t.lower()))) for t in texts])
        p = good / (good + 1.0)
        return np.stack([1 - p, p], axis=1)

    (result,) = evaluate(load_suite(path), graded, LABELS, [])
    assert (result.cases, result.passed) == (2, 2)
    (blind,) = evaluate(load_suite(path), keywords, LABELS, [])  # 1.0 -> 1.0 is not "up"
    assert (blind.cases, blind.passed) == (2, 1)


def test_a_checks_rate_does_not_move_when_another_check_joins_the_file(tmp_path: Path) -> None:
    """int8 dynamic quantisation scales activations per batch: a text's label may depend on
    the texts predicted with it. Each check is predicted on its own texts."""

    def batch_relative(texts: list[str]) -> np.ndarray:
        """positive when a text is longer than its batch's mean: a batch-dependent model."""
        lengths = np.array([len(t) for t in texts], dtype=float)
        positive = lengths > lengths.mean()
        return np.stack([~positive, positive], axis=1).astype(float)

    alone = "checks:\n  - name: short\n    type: mft\n    floor: 0.5\n    examples:\n"
    alone += "      - {text: 'ok film', label: negative}\n"
    alone += "      - {text: 'a fine film', label: positive}\n"
    other = "  - name: long\n    type: mft\n    floor: 0.5\n    examples:\n"
    other += "      - {text: '" + "a very long and winding film " * 4 + "', label: positive}\n"
    (first,) = evaluate(load_suite(write(tmp_path, alone)), batch_relative, LABELS, [])
    both = evaluate(load_suite(write(tmp_path, alone + other)), batch_relative, LABELS, [])
    assert (first.cases, first.passed) == (2, 2)
    assert (both[0].cases, both[0].passed) == (2, 2)


def test_gate_reports_list_each_behavioural_check_with_its_failing_examples(
    tmp_path: Path,
) -> None:
    suite = load_suite(write(tmp_path, NEGATION))
    verdict = verdict_for(evaluate(suite, keywords, LABELS, []), champion={"mft_plain": 0.5})
    json_path, md_path = write_reports(verdict, tmp_path)
    markdown = md_path.read_text()
    assert "| pass | behaviour:mft_plain | 1.0 | 1.0 |" in markdown
    assert "| **FAIL** | behaviour:dir_negation | 0.0 | 0.8 |" in markdown
    assert "## Behavioural checks" in markdown
    assert "| dir_negation | dir | 3 | 0.0000 | 0.8 | — |" in markdown
    assert "| mft_plain | mft | 2 | 1.0000 | 1.0 | 0.5000 |" in markdown
    assert "`The acting is not good.` → positive (expected flip)" in markdown
    written = json.loads(json_path.read_text())
    assert [b["name"] for b in written["behaviour"]] == ["mft_plain", "dir_negation"]
    assert written["behaviour"][1]["failures"][0]["edited"] == "The acting is not good."


def test_auto_finds_the_datasets_own_file_and_nothing_for_a_dataset_without_one(
    tmp_path: Path,
) -> None:
    shipped = REPO / "data" / "checks" / "movie_sentiment.yaml"
    assert checks_path("auto", "movie_sentiment", REPO) == shipped
    assert checks_path("auto", "sms_spam", REPO) is None
    assert checks_path(None, "movie_sentiment", REPO) is None
    assert checks_path("data/checks/movie_sentiment.yaml", "other", REPO) == shipped
    with pytest.raises(ConfigError, match=r"gate\.behaviour_checks: .*missing\.yaml not found"):
        checks_path("missing.yaml", "movie_sentiment", tmp_path)


def test_a_task_without_behavioural_checks_refuses_a_checks_file(tmp_path: Path) -> None:
    from pipeline import tasks

    token = tasks.get("token-classification")
    found = write(tmp_path, NEGATION)
    # The token task has checks, but not label ones: the file is refused naming the key.
    with pytest.raises(ConfigError, match=r"checks\[0\] \(mft_plain\)\.examples\[0\]: token-"):
        behaviour.load_for(str(found), "atis_slots", tmp_path, token)
    suite = behaviour.load_for(str(found), "movie_sentiment", tmp_path, TEXT)
    assert isinstance(suite, Suite)

    class Unchecked:
        name = "other-task"
        behaviour_module = None

    with pytest.raises(ConfigError, match=r"gate\.behaviour_checks: .* other-task has none"):
        behaviour.load_for(str(found), "x", tmp_path, Unchecked())


def _own_labels_suite(tmp_path: Path, bundle: Any, with_disagreeing: bool) -> Path:
    """A checks file whose `agrees` check lists the bundle's own predictions (it passes
    whatever the tiny model learnt) and `disagrees` the other label (it fails)."""
    texts = ["a fine film", "a dull film", "the best of the year", "the worst of the year"]
    own = [p.label for p in bundle.predict(texts)]
    other = [bundle.labels[1 - bundle.labels.index(label)] for label in own]
    checks: list[dict[str, Any]] = [
        {"name": "agrees", "type": "mft", "floor": 1.0, "examples": []},
        {"name": "disagrees", "type": "mft", "floor": 0.5, "examples": []},
    ]
    for text, mine, theirs in zip(texts, own, other, strict=True):
        checks[0]["examples"].append({"text": text, "label": mine})
        checks[1]["examples"].append({"text": text, "label": theirs})
    path = tmp_path / f"checks-{with_disagreeing}.yaml"
    path.write_text(json.dumps({"checks": checks if with_disagreeing else checks[:1]}))
    return path


def test_register_gates_the_shipped_bundle_beside_the_champion_and_logs_the_pass_rates(
    trained: Any, exported: Any, tmp_path: Path
) -> None:
    from pipeline.register import RegisterInputs, gate_and_register
    from tests.conftest import store_client
    from tuneops.runtime import OnnxClassifier
    from tuneops.tracking import MlflowTracker

    bundle = OnnxClassifier(exported.export_dir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reports = tmp_path / "reports"
    reports.mkdir()
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False, bootstrap_resamples=200)

    def register(with_disagreeing: bool) -> Any:
        suite = load_suite(_own_labels_suite(tmp_path, bundle, with_disagreeing))
        tracker = MlflowTracker.start(uri, "tests", (tmp_path / "art").as_uri(), "run", {})
        inputs = RegisterInputs(
            TEXT, cfg, uri, "behaved", trained.paths.data_prepared, reports, suite
        )
        verdict, registered = gate_and_register(inputs, tracker, exported.export_dir, {})
        return verdict, registered, store_client(uri).get_run(tracker.run_id).data.metrics

    first, registered, _ = register(with_disagreeing=False)
    assert first.passed, first.summary()
    assert registered.aliases == ["best", "challenger", "champion"]

    verdict, registered, logged = register(with_disagreeing=True)
    assert verdict.failed_checks == ["behaviour:disagrees"]
    assert registered.aliases == ["challenger"]  # not promoted: v1 stays the champion
    checks = {c.name: c for c in verdict.checks}
    assert (checks["behaviour:agrees"].value, checks["behaviour:disagrees"].value) == (1.0, 0.0)
    # The champion (the same file) scored on the same cases, beside the challenger's rate.
    assert "champion v1 0.0000" in checks["behaviour:disagrees"].detail
    assert logged["behaviour.agrees_pass_rate"] == 1.0
    assert logged["behaviour.disagrees_pass_rate"] == 0.0
    assert logged["champion.behaviour.disagrees_pass_rate"] == 0.0
    _, md_path = write_reports(verdict, reports)
    assert "| **FAIL** | behaviour:disagrees | 0.0 | 0.5 |" in md_path.read_text()
    # `tuneops compare` shows each version's pass rates (v1's file had no `disagrees`).
    from tuneops.compare import compare

    rows = {
        line.split()[0]: line.split()[1:]
        for line in compare(uri, "behaved", "1", "2").splitlines()[1:]
    }
    assert rows["behaviour.agrees_pass_rate"] == ["1", "1"]
    assert rows["behaviour.disagrees_pass_rate"] == ["-", "0.0000", "*"]


def test_the_bundles_model_card_and_bundle_json_hold_the_default_models_pass_rates(
    trained: Any, exported: Any, tmp_path: Path
) -> None:
    from pipeline.export import export
    from tuneops.runtime import OnnxClassifier

    p = trained.params
    suite = load_suite(_own_labels_suite(tmp_path, OnnxClassifier(exported.export_dir), True))
    out = tmp_path / "bundle"
    export(
        TEXT,
        p.export,
        p.train.max_length,
        trained.paths.candidate,
        trained.paths.data_prepared,
        out,
        behaviour=suite,
    )
    meta = json.loads((out / "bundle.json").read_text())
    shipped = OnnxClassifier(out)
    expected = evaluate(suite, behaviour.bundle_predict(shipped), shipped.labels, [])
    assert meta["behaviour"]["file"] == suite.path.name
    assert [(c["name"], c["cases"], c["passed"]) for c in meta["behaviour"]["checks"]] == [
        (r.name, r.cases, r.passed) for r in expected
    ]
    card = (out / "README.md").read_text()
    assert f"## Behavioural checks ({suite.path.name}), the {meta['default_model']} model" in card
    assert f"| disagrees | mft | 4 | {expected[1].pass_rate:.4f} | 0.5 |" in card


# --- token classification: entity checks through the token task's checker ---------------

TOKEN = "token-classification"
CITIES = {"boston", "denver", "dallas", "atlanta", "seattle", "miami"}
DAYS = {"monday", "tuesday", "friday"}


def gazetteer(known: set[str] = CITIES) -> Any:
    """IOB2 tags per word: a known city after "from" is fromloc.city_name, after "to"
    toloc.city_name, a day after "on" depart_date.day_name; a typo in "from" blinds it."""

    def tag(sentences: list[list[str]]) -> list[list[str]]:
        rows = []
        for words in sentences:
            tags = ["O"] * len(words)
            for i in range(1, len(words)):
                before, word = words[i - 1], words[i]
                if word in known and before in ("from", "to"):
                    tags[i] = "B-fromloc.city_name" if before == "from" else "B-toloc.city_name"
                elif word in DAYS and before == "on":
                    tags[i] = "B-depart_date.day_name"
            rows.append(tags)
        return rows

    return tag


def token_suite(tmp_path: Path, text: str) -> Suite:
    from pipeline import tasks

    return behaviour.load_for(str(write(tmp_path, text)), "atis_slots", tmp_path, tasks.get(TOKEN))


def token_split() -> Any:
    """A test split of 12 sentences with gold IOB2 tags (the gazetteer's own)."""
    from pipeline.tasks.token_classification import TokenTestSplit

    cities = sorted(CITIES)
    sentences = [
        f"show me flights from {cities[i % 6]} to {cities[(i + 1) % 6]} on monday".split()
        for i in range(12)
    ]
    tags = gazetteer()(sentences)
    return TokenTestSplit(sentences, tags, sorted({t for row in tags for t in row}))


TOKEN_MFT = """
checks:
  - name: mft_slots
    type: mft
    floor: 1.0
    examples:
      - text: flights from boston to denver
        entities: [{type: fromloc.city_name, text: boston}, {type: toloc.city_name, text: denver}]
      - text: show me flights on monday
        entities: [{type: depart_date.day_name, text: monday}]
      - {text: list all flights, entities: []}
"""


def test_a_token_mft_case_passes_on_exactly_the_expected_entities(tmp_path: Path) -> None:
    from pipeline.tasks import token_behaviour

    suite = token_suite(tmp_path, TOKEN_MFT)
    (found,) = token_behaviour.evaluate(suite, gazetteer(), token_split())
    assert (found.type, found.cases, found.passed) == ("mft", 3, 3)

    def noisy(sentences: list[list[str]]) -> list[list[str]]:
        """the gazetteer, and "all" tagged flight_mod: one entity more than expected"""
        rows = gazetteer()(sentences)
        return [
            [("B-flight_mod" if w == "all" else t) for w, t in zip(s, r, strict=True)]
            for s, r in zip(sentences, rows, strict=True)
        ]

    (extra,) = token_behaviour.evaluate(suite, noisy, token_split())
    assert (extra.cases, extra.passed) == (3, 2)  # containing the expected is not enough
    assert [(f.text, f.expected, f.got) for f in extra.failures] == [
        ("list all flights", "no entity", "flight_mod 'all'")
    ]

    def blind_to_days(sentences: list[list[str]]) -> list[list[str]]:
        return [[t if "day" not in t else "O" for t in r] for r in gazetteer()(sentences)]

    (missing,) = token_behaviour.evaluate(suite, blind_to_days, token_split())
    assert (missing.cases, missing.passed) == (3, 2)
    assert missing.failures[0].expected == "depart_date.day_name 'monday'"
    assert missing.failures[0].got == "no entity"


SWAP_CITIES = """\
  - name: inv_swap_cities
    type: inv
    floor: 0.9
    perturbation: swap_entity
    types: [fromloc.city_name, toloc.city_name]
    sample: 12
"""
TOKEN_INV = (
    """
checks:
  - {name: inv_punctuation, type: inv, floor: 1.0, perturbation: punctuation, sample: 12}
  - {name: inv_typos, type: inv, floor: 0.9, perturbation: typos, sample: 12, seed: 3}
"""
    + SWAP_CITIES
)


def test_token_invariance_edits_outside_the_entities_or_swaps_one_for_its_type(
    tmp_path: Path,
) -> None:
    from pipeline.tasks import token_behaviour
    from tuneops.runtime import iob2_entities

    suite = token_suite(tmp_path, TOKEN_INV)
    split = token_split()
    punctuation, typos, swaps = (
        token_behaviour.cases(suite, check, split) for check in suite.checks
    )
    assert [c.edited for c in punctuation] == [[*s, "."] for s in split.sentences]
    gold = {" ".join(s): t for s, t in zip(split.sentences, split.tags, strict=True)}
    for case in typos:  # one word changed, never a word of a gold entity
        (changed,) = [
            i for i, (a, b) in enumerate(zip(case.words, case.edited or [], strict=True)) if a != b
        ]
        assert gold[" ".join(case.words)][changed] == "O"
        assert sorted(case.edited[changed]) == sorted(case.words[changed])
    for case in swaps:  # one city for another of the same type, seen in the split
        (changed,) = [
            i for i, (a, b) in enumerate(zip(case.words, case.edited or [], strict=True)) if a != b
        ]
        assert gold[" ".join(case.words)][changed] in ("B-fromloc.city_name", "B-toloc.city_name")
        assert case.edited[changed] in CITIES
    assert token_behaviour.cases(suite, suite.checks[1], split) == typos  # seeded

    results = token_behaviour.evaluate(suite, gazetteer(), split)
    # The gazetteer loses the entity after a typo in "from", "to" or "on", and only then.
    broken = sum(
        any(
            a != b and a in ("from", "to", "on")
            for a, b in zip(c.words, c.edited or [], strict=True)
        )
        for c in typos
    )
    assert 0 < broken < 12
    assert [(r.name, r.cases, r.passed) for r in results] == [
        ("inv_punctuation", 12, 12),
        ("inv_typos", 12, 12 - broken),
        ("inv_swap_cities", 12, 12),
    ]
    # A tagger that does not know atlanta fails each swap to atlanta, and only those.
    without = gazetteer(CITIES - {"atlanta"})
    (swapped,) = token_behaviour.evaluate(
        Suite(suite.path, suite.names, suite.checks[2:], suite.checker), without, split
    )
    # (before: not found, after: found, or the other way round; the other city is as it was)
    hit = sum(
        "atlanta" in {a, b} for c in swaps for a, b in zip(c.words, c.edited, strict=True) if a != b
    )
    assert 0 < hit < 12
    assert (swapped.cases, swapped.passed) == (12, 12 - hit)
    assert iob2_entities(gazetteer()([swaps[0].edited])[0])  # the edit is tagged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "checks:\n  - {name: d, type: dir, floor: 0.5, expect: flip, pairs: [{text: a, "
            "edited: b}]}\n",
            r"checks\[0\] \(d\)\.type: a dir check does not apply to token-classification "
            r"\(its checks: mft, inv\)",
        ),
        (
            "checks:\n  - {name: n, type: inv, floor: 0.5, perturbation: names, sample: 5}\n",
            r"checks\[0\] \(n\)\.perturbation: names does not apply to token-classification "
            r"\(its perturbations: punctuation, typos, swap_entity\)",
        ),
        (
            "checks:\n  - {name: m, type: mft, floor: 0.5, examples: [{text: a b, label: x}]}\n",
            r"checks\[0\] \(m\)\.examples\[0\]: token-classification's mft examples name "
            r"`entities`",
        ),
        (
            "checks:\n  - {name: m, type: mft, floor: 0.5, examples: [{text: from boston, "
            "entities: [{type: city, text: dallas}]}]}\n",
            r"checks\[0\] \(m\)\.examples\[0\]\.entities\[0\]: 'dallas' is not a run of words "
            r"of 'from boston'",
        ),
        (
            "checks:\n  - {name: t, type: inv, floor: 0.5, perturbation: typos, texts: [a b]}\n",
            r"checks\[0\] \(t\)\.texts: a typos check of token-classification needs the "
            r"entities: `sample` \(test rows\) or `examples`",
        ),
    ],
)
def test_a_check_the_token_task_cannot_run_is_refused_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=r"checks\.yaml: " + message):
        token_suite(tmp_path, text)


def test_the_text_task_refuses_entity_examples_and_swaps(tmp_path: Path) -> None:
    entities = (
        "checks:\n  - {name: m, type: mft, floor: 0.5, examples: [{text: a, entities: []}]}\n"
    )
    with pytest.raises(ConfigError, match=r"examples\[0\]: text-classification's mft examples"):
        behaviour.load_for(str(write(tmp_path, entities)), "x", tmp_path, TEXT)
    swap = "checks:\n  - {name: s, type: inv, floor: 0.5, perturbation: swap_entity, sample: 3}\n"
    with pytest.raises(ConfigError, match=r"perturbation: swap_entity does not apply to text-"):
        behaviour.load_for(str(write(tmp_path, swap)), "x", tmp_path, TEXT)


def test_the_gate_rejects_a_tagger_below_a_token_checks_floor(tmp_path: Path) -> None:
    from pipeline.tasks import token_behaviour

    suite = token_suite(tmp_path, TOKEN_MFT + SWAP_CITIES)
    blind = token_behaviour.evaluate(suite, gazetteer(CITIES - {"atlanta"}), token_split())
    verdict = verdict_for(blind, champion={r.name: 1.0 for r in blind})
    assert verdict.failed_checks == ["behaviour:inv_swap_cities"]
    (found,) = [c for c in verdict.checks if c.name == "behaviour:inv_swap_cities"]
    assert found.detail.startswith("inv (swap_entity): ")
    assert "'show me flights from" in found.detail and "toloc.city_name" in found.detail


def test_the_shipped_atis_slots_checks_load_for_the_token_task(tmp_path: Path) -> None:
    from pipeline import tasks
    from pipeline.tasks import token_behaviour

    suite = behaviour.load_for("auto", "atis_slots", REPO, tasks.get(TOKEN))
    assert suite is not None and suite.path == REPO / "data" / "checks" / "atis_slots.yaml"
    assert {c.type for c in suite.checks} == {"mft", "inv"}
    assert {c.perturbation for c in suite.checks} == {None, "punctuation", "typos", "swap_entity"}
    nothing = token_behaviour.evaluate(suite, lambda s: [["O"] * len(w) for w in s], token_split())
    mft = [c for c in suite.checks if c.type == "mft"]
    # A tagger that finds nothing passes only the examples that have no entity.
    assert [r.passed for r in nothing if r.type == "mft"] == [
        sum(not e.entities for e in c.examples) for c in mft
    ]


def test_a_token_task_accepts_a_checks_file_path() -> None:
    from pipeline import tasks
    from tuneops.config import validate_params

    params = validate_params(
        {
            "task": TOKEN,
            "train": {"max_length": 64, "metric_for_best_model": "entity_f1"},
            "gate": {
                "behaviour_checks": "data/checks/atis_slots.yaml",
                "baselines": ["before_finetuning"],
                "floors": {"test_entity_f1": 0.5},
            },
        },
        "params.yaml",
    )
    tasks.get(TOKEN).check(params)  # no ConfigError


def test_the_stages_that_run_checks_and_only_those_depend_on_each_tasks_checker() -> None:
    """pipeline.behaviour imports a task's checker by name: dvc.yaml must still list it."""
    from tuneops.dvcfile import code_deps
    from tuneops.stages import STAGES

    for name in ("export", "register"):
        assert "pipeline/tasks/token_behaviour.py" in code_deps(STAGES[name])
    for name in ("prepare", "train", "evaluate"):
        assert "pipeline/tasks/token_behaviour.py" not in code_deps(STAGES[name])
        assert "pipeline/behaviour.py" not in code_deps(STAGES[name])


@pytest.fixture(scope="module")
def token_bundle(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The tiny BERT with an (untrained) token-classification head over the gazetteer's
    tags, a prepared test split of token_split's sentences, and its exported bundle."""
    import pandas as pd
    from transformers import AutoModelForTokenClassification

    from pipeline import tasks
    from pipeline.export import export
    from pipeline.prepare import split_record
    from pipeline.training.modeling import load_classifier, load_tokenizer
    from tuneops.config import DataConfig, ExportConfig, PrepareConfig

    root = tmp_path_factory.mktemp("token-bundle")
    split = token_split()
    labels = ["O", *[t for t in split.labels if t != "O"]]
    candidate, prepared = root / "candidate", root / "prepared"
    model = load_classifier(
        tiny_model_dir, tuple(labels), auto_class=AutoModelForTokenClassification
    )
    model.save_pretrained(candidate)
    load_tokenizer(tiny_model_dir).save_pretrained(candidate)
    (candidate / "labels.json").write_text(json.dumps(labels))
    prepared.mkdir()
    record = split_record(DataConfig(), PrepareConfig(), official_test=True)
    (prepared / "manifest.json").write_text(json.dumps({"labels": labels, "split": record}))
    pd.DataFrame(
        {
            "text": [" ".join(s) for s in split.sentences],
            "tokens": split.sentences,
            "tags": split.tags,
            "tag_ids": [[labels.index(t) for t in row] for row in split.tags],
        }
    ).to_parquet(prepared / "test.parquet")
    task = tasks.get(TOKEN)
    out = root / "export"
    export(task, ExportConfig(parity_examples=12), 32, candidate, prepared, out)
    return task, prepared, out, candidate


def _own_entities_suite(tmp_path: Path, bundle: Any, with_disagreeing: bool) -> Suite:
    """`agrees` lists the entities the bundle finds itself (it passes whatever the head
    does), `disagrees` one entity more in each sentence (it fails)."""
    from pipeline import tasks
    from tuneops.runtime import iob2_entities

    sentences = [s.split() for s in ("flights from boston to denver", "a flight on monday")]
    own = [
        [{"type": k, "text": " ".join(words[a:b])} for k, a, b in iob2_entities(tags)]
        for words, tags in zip(sentences, bundle.predict_words(sentences), strict=True)
    ]
    checks: list[dict[str, Any]] = [
        {"name": name, "type": "mft", "floor": 1.0 if name == "agrees" else 0.5, "examples": []}
        for name in ("agrees", "disagrees")
    ]
    for words, found in zip(sentences, own, strict=True):
        checks[0]["examples"].append({"text": " ".join(words), "entities": found})
        extra = {"type": "not_a_type", "text": words[0]}
        checks[1]["examples"].append({"text": " ".join(words), "entities": [*found, extra]})
    path = tmp_path / f"token-checks-{with_disagreeing}.yaml"
    path.write_text(json.dumps({"checks": checks if with_disagreeing else checks[:1]}))
    suite = behaviour.load_for(str(path), "atis_slots", tmp_path, tasks.get(TOKEN))
    assert suite is not None
    return suite


def test_register_rejects_a_token_bundle_below_a_token_checks_floor(
    token_bundle: Any, tmp_path: Path
) -> None:
    from pipeline.register import RegisterInputs, gate_and_register
    from tuneops.runtime import OnnxTokenClassifier
    from tuneops.tracking import MlflowTracker

    task, prepared, export_dir, _ = token_bundle
    bundle = OnnxTokenClassifier(export_dir)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    reports = tmp_path / "reports"
    reports.mkdir()
    cfg = GateConfig(floors={}, beat_baselines=False, per_class=False, bootstrap_resamples=200)

    def register(with_disagreeing: bool) -> Any:
        suite = _own_entities_suite(tmp_path, bundle, with_disagreeing)
        tracker = MlflowTracker.start(uri, "tests", (tmp_path / "art").as_uri(), "run", {})
        inputs = RegisterInputs(task, cfg, uri, "tagged", prepared, reports, suite)
        return gate_and_register(inputs, tracker, export_dir, {})

    first, registered = register(with_disagreeing=False)
    assert first.passed, first.summary()
    assert registered.aliases == ["best", "challenger", "champion"]
    verdict, registered = register(with_disagreeing=True)
    assert verdict.failed_checks == ["behaviour:disagrees"]
    assert registered.aliases == ["challenger"]  # v1 stays the champion
    (found,) = [c for c in verdict.checks if c.name == "behaviour:disagrees"]
    assert (found.value, found.threshold) == (0.0, 0.5)
    assert "not_a_type 'flights'" in found.detail
    assert "champion v1 0.0000" in found.detail  # the champion on the same cases


def test_a_token_bundles_card_and_bundle_json_hold_its_entity_check_rates(
    token_bundle: Any, tmp_path: Path
) -> None:
    from pipeline.export import export
    from pipeline.tasks import token_behaviour
    from tuneops.config import ExportConfig
    from tuneops.runtime import OnnxTokenClassifier

    task, prepared, export_dir, candidate = token_bundle
    suite = _own_entities_suite(tmp_path, OnnxTokenClassifier(export_dir), True)
    out = tmp_path / "bundle"
    export(task, ExportConfig(parity_examples=12), 32, candidate, prepared, out, behaviour=suite)
    meta = json.loads((out / "bundle.json").read_text())
    assert [(c["name"], c["cases"], c["passed"]) for c in meta["behaviour"]["checks"]] == [
        ("agrees", 2, 2),
        ("disagrees", 2, 0),
    ]
    assert "| disagrees | mft | 2 | 0.0000 | 0.5 |" in (out / "README.md").read_text()
    shipped = OnnxTokenClassifier(out)
    tagged = token_behaviour.evaluate(suite, shipped.predict_words, task.test_split(prepared, []))
    assert [r.passed for r in tagged] == [2, 0]
