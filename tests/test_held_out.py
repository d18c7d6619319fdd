"""The held-out transfer check (``python -m hgd.cli.experiments held-out``): rows, resume, refusal."""

from __future__ import annotations

import json

import pytest

from hgd.evaluation.held_out import held_out_transfer, markdown

pytestmark = pytest.mark.slow


def test_rows_resume_and_another_setting_is_refused(small_source, tmp_path):
    out = tmp_path / "held_out.json"
    settings = {"MI-FGSM": {"attack": "mifgsm", "steps": 2, "mu": 1.0},
                "TI (TI-MI-FGSM)": {"attack": "di_mifgsm", "steps": 2, "mu": 1.0, "diversity_prob": 0.0,
                                    "ti_kernel": 5}}
    kwargs = dict(craft=["efficientnet_lite0"], held_out="efficientnet_lite1", epsilon=16, limit=2, batch_size=2)
    results = held_out_transfer(small_source, out, settings=settings, **kwargs)
    assert list(results["rows"]) == ["clean", "MI-FGSM", "TI (TI-MI-FGSM)"]
    rows = results["rows"]
    # White-box on the crafting model, 16 levels: an attack that does not beat clean accuracy there is broken.
    assert rows["MI-FGSM"]["crafting"] < rows["clean"]["crafting"] or rows["clean"]["crafting"] == 0
    assert all(0.0 <= row["held_out"] <= 1.0 for row in rows.values())
    assert "| MI-FGSM |" in markdown(results)
    stamp = out.stat().st_mtime_ns
    assert held_out_transfer(small_source, out, settings=settings, **kwargs) == results  # nothing rerun
    assert out.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="another run"):
        held_out_transfer(small_source, out, settings=settings, **{**kwargs, "epsilon": 8})
    assert json.loads(out.read_text())["epsilon"] == 16
