"""The deployment side runs where torch and transformers cannot be imported."""

import json
import subprocess
import sys
from pathlib import Path

from pipeline.export import ExportResult
from tuneops.runtime import OnnxClassifier

REPO = Path(__file__).parents[2]

# A meta-path finder that makes `import torch` (and the rest) fail in the child process.
BLOCKER = (
    "import sys\n"
    "class Block:\n"
    "    def __init__(self, names): self.names = names\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in self.names:\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block({blocked!r}))\n"
)


def run_blocked(code: str, blocked: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=blocked) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_the_bundles_own_runtime_file_predicts_without_torch_transformers_or_tuneops(
    exported: ExportResult, tmp_path: Path
) -> None:
    bundle = exported.export_dir
    code = (
        "import runpy\n"
        f"sys.argv = ['tuneops_runtime.py', 'a wonderful film', 'dull and long']\n"
        f"runpy.run_path({str(bundle / 'tuneops_runtime.py')!r}, run_name='__main__')\n"
    )
    # cwd outside the repository: `tuneops` is not on the path unless installed; blocked too.
    done = run_blocked(code, ("torch", "transformers", "tuneops"), tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    expected = OnnxClassifier(bundle).predict(["a wonderful film", "dull and long"])
    assert [(r["text"], r["label"]) for r in lines] == [
        ("a wonderful film", expected[0].label),
        ("dull and long", expected[1].label),
    ]
    assert [r["score"] for r in lines] == [round(p.score, 6) for p in expected]


def test_predict_cli_and_server_module_import_no_torch_or_transformers(
    exported: ExportResult,
) -> None:
    code = (
        "from tuneops.cli import main\n"
        "import tuneops.serving.server\n"
        f"code = main(['predict', '--bundle', {str(exported.export_dir)!r}, 'a wonderful film'])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    done = run_blocked(code, ("torch", "transformers"), REPO)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    expected = OnnxClassifier(exported.export_dir).predict(["a wonderful film"])[0]
    assert (record["label"], record["score"]) == (expected.label, round(expected.score, 6))
