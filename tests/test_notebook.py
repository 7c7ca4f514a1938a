"""examples/quickstart.ipynb, executed top to bottom in a real Jupyter kernel (nbclient), as a
user would run it; its outputs are checked, not just its lack of errors."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.integration_utils import REPO

NOTEBOOK = REPO / "examples" / "quickstart.ipynb"
RUN_DIR_ENV = "METTA_RL_QUICKSTART_RUN_DIR"
PROBE = "import sys\nprint('KERNEL', sys.executable, sys.prefix, sep='|')"


def stream_text(nb, name: str = "stdout") -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream" and o.get("name") == name
    )


def png_outputs(nb) -> list[bytes]:
    return [
        base64.b64decode(o["data"]["image/png"])
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
    ]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    work = tmp_path_factory.mktemp("notebook")
    run_dir = work / "quickstart-run"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))  # which Python the kernel really is
    mp = pytest.MonkeyPatch()
    mp.setenv(RUN_DIR_ENV, str(run_dir))  # the kernel inherits this process's environment
    try:
        # kernel_name="python3" is this venv's ipykernel: jupyter_client runs a kernelspec whose
        # argv[0] is "python" with sys.executable; the probe cell below checks it.
        client = NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
        )
        client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    finally:
        mp.undo()
    return nb, run_dir, work


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert "hydra" not in source.lower() and "omegaconf" not in source.lower()  # plain Python
    calls = ("TrainerConfig.from_dict(", ".setup()", ".train_epoch()", ".train()", ".evaluate()", "plot_learning_curve(")
    for call in calls:
        assert call in source, call


@pytest.mark.timeout(600)
def test_kernel_is_this_venv(executed):
    nb, _, _ = executed
    probe = [line for line in stream_text(nb).splitlines() if line.startswith("KERNEL|")]
    assert len(probe) == 1
    _, executable, prefix = probe[0].split("|")
    assert prefix == sys.prefix
    assert Path(executable).parent == Path(sys.executable).parent


def test_progress_lines_from_train_epoch(executed):
    nb, run_dir, _ = executed
    out = stream_text(nb)
    assert f"run directory: {run_dir}" in out
    progress = r"^epoch\s+(\d+)\s+agent_step\s+(\d+)\s+episode_return\s+(\S+)\s+policy_loss\s+(\S+)$"
    rows = re.findall(progress, out, re.MULTILINE)
    assert [(int(e), int(s)) for e, s, _, _ in rows] == [(k, 256 * k) for k in range(1, 6)]
    for _, _, ret, loss in rows:
        assert 0 < float(ret) <= 500 and abs(float(loss)) < 10


def test_train_and_evaluation_results(executed):
    nb, run_dir, _ = executed
    out = stream_text(nb)
    trained = re.search(r"^trained (\d+) agent steps in (\d+) epochs", out, re.MULTILINE)
    assert trained and (int(trained[1]), int(trained[2])) == (49920, 195)
    score = re.search(r"^eval mean return (\S+) \+/- (\S+) over (\d+) episodes$", out, re.MULTILINE)
    assert score, out
    # 50k steps of PPO take CartPole from ~20 (random) to 500 (the cap) with this seed.
    assert float(score[1]) >= 400 and int(score[3]) == 20
    assert (run_dir / "summary.json").is_file() and (run_dir / "metrics.jsonl").is_file()
    assert "Traceback" not in stream_text(nb, "stderr")


def test_learning_curve_is_shown_inline(executed):
    from PIL import Image

    nb, _, _ = executed
    images = png_outputs(nb)
    assert len(images) == 1
    img = Image.open(io.BytesIO(images[0])).convert("RGB")
    assert img.width >= 400 and img.height >= 250
    # A drawn plot, not a blank canvas: many colours, including the curves' blue and orange.
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
    present = {rgb for _, rgb in colours}
    assert (31, 119, 180) in present  # tab:blue, the training return
    assert (255, 127, 14) in present  # tab:orange, the eval return


def test_notebook_writes_only_its_run_dir(executed):
    _, run_dir, work = executed
    assert sorted(p.name for p in work.iterdir()) == [run_dir.name]
