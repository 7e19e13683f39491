"""The published measurements of pssim/validation.py: every row with a tolerance is a claims test, and
the machinery that reads pssim's figures (steady throughput, the document's markers) is checked on its
own against closed forms."""

import math

import pytest

from pssim import validation
from pssim.validation import BEGIN, END, Row, steady_throughput


def _id(row: Row) -> str:
    return f"{row.section.split(':')[0]}: {row.what}"


ASSERTED = [pytest.param(r, id=_id(r), marks=[pytest.mark.xfail(strict=True, reason=r.miss)] if r.miss else [])
            for r in validation.ROWS if r.tolerance is not None and r.tested_in == "tests/test_validation.py"]


@pytest.mark.claims
@pytest.mark.slow
@pytest.mark.parametrize("row", ASSERTED)
def test_a_published_figure_is_reproduced_within_its_tolerance(row):
    value = row.measure()
    error = row.error(value)
    assert abs(error) <= row.tolerance, (
        f"{row.what}: published {row.published:,.4g} {row.unit} ({row.source}), pssim {value:,.4g}: "
        f"error {error:+.1%} beyond the {row.tolerance:.0%} allowed (docs/VALIDATION.md explains the misses)")


def test_steady_throughput_is_samples_per_step_over_the_time_between_step_ends():
    """Without stragglers, once the first steps' start-up has passed, every BSP step takes the same time
    T, so between the end of step 3 and the last complete step the run folds 4 x 32 samples per T."""
    result = validation.run("train.steps=10", "train.numerics=false")
    ends = result.steps.groupby("step")["comm_end"].max().dropna()  # steps whose every pull ended
    period = ends.diff().iloc[4:]  # steps 4 on
    assert period.max() - period.min() < 1e-12  # every step takes the same time
    assert steady_throughput(result, skip=3) == pytest.approx(4 * 32 / period.iloc[-1], rel=1e-9)


def test_the_tables_replace_only_the_text_between_the_markers(tmp_path):
    rows = [Row("A section", "two", 2.0, "x", "a book", lambda: 2.5, tolerance=0.5),
            Row("A section", "never", 4.0, "x", "a book", lambda: math.inf)]
    doc = tmp_path / "VALIDATION.md"
    doc.write_text(f"# Title\n\nkept\n\n{BEGIN}\nold\n{END}\n\nalso kept\n")
    validation.write(doc, rows)
    text = doc.read_text()
    assert text.startswith("# Title\n\nkept\n\n" + BEGIN) and text.endswith(END + "\n\nalso kept\n")
    assert "old" not in text
    assert "| two | 2 x | 2.5 | +25.0% | check | 50% (test_validation) | a book |" in text
    assert "| never | 4 x | never |" in text


def test_the_byteps_cloud_is_fitted_on_resnet50_alone_and_checked_on_the_rest():
    """beta and eta (network.fabric_share_beta, policy.overlap_loss) were fitted on the six ResNet-50 rows
    at 16-64 GPUs (their speed-ups derive from them); VGG-16 and the one-VM rows only check the fit."""
    rows = [r for r in validation.ROWS if r.section.startswith("BytePS vs Horovod")]
    fitted = {r.what for r in rows if r.role == "fit"}
    assert fitted == {f"ResNet-50, {system}, {gpus} GPUs" for gpus in (16, 32, 64)
                      for system in ("Horovod (NCCL)", "BytePS", "BytePS over Horovod")}
    assert all(r.role == "check" for r in rows if r.what.startswith("VGG-16") or r.what.endswith(", 8 GPUs"))
    assert all(r.tolerance == 0.25 for r in rows if not r.what.endswith("over Horovod, 8 GPUs"))
