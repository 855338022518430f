"""`tuneops predict` on texts and on CSV/JSONL files."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.export import ExportResult
from tuneops.cli import main
from tuneops.errors import DataValidationError, ModelFileError
from tuneops.runtime import OnnxClassifier

TEXTS = ["a wonderful, moving film", 'dull, "flat"\nand far too long', "fine"]


# fp32 throughout: dynamic int8 quantises activations per batch, so its scores move
# slightly with the batch a text lands in; fp32 scores agree to float rounding.
def expected(bundle: Path) -> list[tuple[str, float]]:
    predictions = OnnxClassifier(bundle, model="fp32").predict(TEXTS)
    return [(p.label, pytest.approx(p.score, abs=1e-5)) for p in predictions]


def test_csv_in_csv_out_keeps_columns_and_adds_probabilities(
    exported: ExportResult, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "review": TEXTS}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    bundle = str(exported.export_dir)
    argv = ["predict", "--bundle", bundle, "--model", "fp32", "--input", str(source)]
    argv += ["--text-column", "review", "--output", str(out), "--batch-size", "2"]
    assert main(argv) == 0
    frame = pd.read_csv(out, keep_default_na=False)
    columns = ["id", "review", "label", "score", "p_negative", "p_positive", "truncated"]
    assert list(frame.columns) == columns
    assert frame["review"].tolist() == TEXTS  # quoted newline and commas survive
    assert list(zip(frame["label"], frame["score"], strict=True)) == expected(exported.export_dir)


def test_jsonl_in_jsonl_out(exported: ExportResult, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    out = tmp_path / "out.jsonl"
    bundle = str(exported.export_dir)
    argv = ["predict", "--bundle", bundle, "--model", "fp32", "--input", str(source)]
    assert main([*argv, "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["label"], r["score"]) for r in rows] == expected(exported.export_dir)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)


def test_texts_on_the_command_line_print_json_lines(
    exported: ExportResult, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--bundle", str(exported.export_dir), "--model", "fp32", *TEXTS]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS
    assert [(r["label"], r["score"]) for r in rows] == expected(exported.export_dir)


def test_a_missing_column_or_an_empty_text_names_the_file_row_and_field(
    exported: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.csv"
    pd.DataFrame({"review": ["good", "  ", "bad"]}).to_csv(source, index=False)
    bundle = str(exported.export_dir)
    assert main(["predict", "--bundle", bundle, "--input", str(source)]) == 3
    assert f"{source}: no 'text' column; found ['review']" in capsys.readouterr().err
    argv = ["predict", "--bundle", bundle, "--input", str(source), "--text-column", "review"]
    assert main([*argv, "--output", str(tmp_path / "out.csv")]) == DataValidationError.exit_code
    err = capsys.readouterr().err
    assert f"{source}: row 3, field 'review': expected a non-empty text, found '  '" in err
    assert not (tmp_path / "out.csv").exists()


def test_a_folder_that_is_not_a_bundle_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", "--bundle", str(tmp_path), "some text"]) == ModelFileError.exit_code
    assert f"{tmp_path / 'bundle.json'}: missing from the bundle" in capsys.readouterr().err


def test_model_files_are_plain_names_inside_the_bundle(
    exported: ExportResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneops.runtime import BundleError

    bundle = Path(shutil.copytree(exported.export_dir, tmp_path / "bundle"))
    outside = tmp_path / "elsewhere.onnx"  # a real graph, but not the bundle's
    shutil.copyfile(bundle / "model.onnx", outside)
    for given in ("../elsewhere.onnx", str(outside), "sub/model.onnx"):
        with pytest.raises(BundleError) as refused:
            OnnxClassifier(bundle, model=given)
        assert str(refused.value) == (
            f"{bundle}: --model {given!r} is not a plain file name; a bundle's model files "
            "are .onnx files inside its folder (e.g. model.int8.onnx)"
        )
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["models"]["fp32"]["file"] = "../elsewhere.onnx"
    (bundle / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"bundle\.json models\.fp32\.file '\.\./elsewhere"):
        OnnxClassifier(bundle, model="fp32")
    # the CLI says so with the model-file exit code; a plain name in the bundle still runs
    assert main(["predict", "--bundle", str(bundle), "--model", "../x.onnx", "a"]) == 8
    assert "'../x.onnx' is not a plain file name" in capsys.readouterr().err
    assert OnnxClassifier(bundle, model="model.onnx").model_file == "model.onnx"
