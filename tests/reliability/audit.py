"""The findings of the December 2026 audit (`../shared/reviews/audit-2026-12.md`, of 9fa413e).

Each finding is fixed by one or more tests marked `@pytest.mark.audit("M4", ...)`: the marker
records the ids as a JUnit property (tests/conftest.py), and `tests/reliability/table.py
--audit` writes docs/reliability.md's audit table from a JUnit file, so a finding is shown
"fixed" only when a test for it ran and passed. A finding the project does not act on has
its reason in DECLINED, written here by hand.
"""

from __future__ import annotations

FINDINGS: dict[str, str] = {
    "C1": "`pull-bundle --out DIR` deletes what is already in DIR",
    "C2": "`reproduce` of a token-classification version compares no metrics",
    "C3": "two flows in one project corrupt each other (no run lock)",
    "M1": "the registry lock does not exclude",
    "M2": "the gate judges one model and ships another",
    "M3": "`export_parity` cannot fail in the flow",
    "M4": "the champion can be re-scored on its own training rows",
    "M5": "`promote` of an older version can score against mismatched label ids",
    "M6": "the non-inferiority margin is not tied to the test-set size, and ratchets",
    "M7": "`tuneops run` versions unvalidated data",
    "M8": "ingest's validation is not serialised (TOCTOU)",
    "M9": "ingest without labels.json infers the label set from the batch",
    "M10": "lineage tags unreliable (-dirty, data.version, no data lock through prepare)",
    "M11": "DVC stage dependencies incomplete",
    "M12": "stale committed reports/metrics.json and data/raw.dvc",
    "M13": "long texts silently truncated",
    "M14": "a wrong base model trains from random weights",
    "M15": "the before-fine-tuning baseline is a strawman ([CLS] pooler only)",
    "M16": "NER serves a word segmentation that is never evaluated",
    "M17": "`tune` ignores `task`",
    "M18": "DVC failures reported as DVC's support banner",
    "M19": "loading the champion runs code from the artifact store",
    "M20": "the retrain skip key has holes",
    "M21": "every ingested batch must look like a full dataset",
    "T1": "`run` bad-input cases ran without DVC",
    "T2": "the secrets test cannot fail on the real leak vectors",
    "T3": "the 'equally good challenger' is bit-identical",
    "T4": "the retrain end-to-end test has the champion comparison off",
    "T5": "the promotion race tests only the registry lock",
    "T6": "the racing stale-lock break is untested",
    "T7": "the DVC fault tests do not assert the cause",
    "T8": "range assertions that cannot fail",
    "T9": "the batching test does not check batching",
    "T10": "missing coverage (tune/reproduce for tokens, DVC deps, truncation)",
    "T11": "mocks and simulations (CUDA, the crash before rename)",
    "T12": "DeprecationWarning and FutureWarning ignored",
    "D1": "stale `make run` output and timing",
    "D2": "the training benchmark is from cb7ff89",
    "D3": "'a rejection leaves every alias where it was'",
    "D4": "'appending data never moves an existing row between splits'",
    "D5": "'two ingests at once are serialised'",
    "D6": "'the full gate against the champion' in retraining",
    "D7": "'30 rejected with a named cause'",
    "D8": "ingest 'with the dataset's label set'",
    "D9": "'5 of 5 security checks held'",
    "D10": "'on CPU they must be identical' for token versions",
    "D11": "committed reports/metrics.json and data/raw.dvc are test leftovers",
}

# Minor (m) and missing (X) items, fixed where cheap: shown in the table only once a test
# holds one or a reason declines it.
MINOR: dict[str, str] = {
    "m1": "stratification only measured, never enforced",
    "m2": "the max_rows slice is not stable as rows are appended",
    "m3": "validation macro-F1 defined differently from the test metric",
    "m4": "label_all_subtokens gives continuation pieces the B- tag",
    "m5": "numeric labels 1 and 1.0 become two classes",
    "m6": "the int8 decision is made on the test split",
    "m7": "quantize_int8 changes the root logger's level",
    "m8": "the runtime follows arbitrary model-file paths",
    "m9": "the server has no concurrency bound",
    "m10": "data.name accepts '.' and '..'",
    "m11": "model.name_or_path is passed to importlib",
    "m12": "config errors surface late (after training)",
    "m13": "a bad error hint (prepare.train_fraction)",
    "m14": "the bootstrap is dense O(resamples x n)",
    "m15": "token splits do not require each entity type in train and test",
    "m16": "`reproduce` ignores library versions and a -dirty recorded commit",
    "m17": "tags written outside the registry lock",
    "m18": "every candidate uploads the full bundle",
    "m19": "make clean deletes the tracked reports/metrics.json",
    "m20": "stale comments",
    "m21": "a gate exemption written after seeing the test result",
    "m22": "no check that candidate and prepared data agree on labels",
    "X1": "no progress output during training",
    "X2": "no class-imbalance handling",
    "X3": "multi-label data silently treated as multi-class",
    "X4": "no long-document mode",
    "X5": "no explanations, calibration or abstention",
    "X6": "no drift or monitoring",
    "X7": "unclear errors for a missing or misspelt base model",
    "X8": "no check of train.max_length against the model",
}

# Finding id -> why the project does not change the code for it (shown in the table).
DECLINED: dict[str, str] = {
    "D2": "the README's training benchmark keeps its figure with its commit (cb7ff89), now says "
    "what the 1.64x compares (length-grouped batches against a script padding to the "
    "longest) and that it was not re-run; re-measuring on the current code is issue 20's",
    "T11": "the CUDA options and the crash before rename stay simulations, said so in the "
    "tests' docstrings: this project's test machines have no GPU, and a real SIGKILL leaves "
    "the previous outputs intact (only a hidden temporary sibling stays), not worth a "
    "sweeper that could remove another live run's folder",
}
