"""Every run records each SAE's FVU and L0 on the run's own images, and warns when the FVU is implausible."""

import json

import pytest
import torch

import cafe_bench
from cafe_bench.sae.quality import FVU_WARNING


def test_the_run_records_fvu_and_l0_as_computed_independently(tmp_path, suite):
    cafe_bench.run("tiny", methods=["random"], layers=[3], out=tmp_path, progress=False)
    doc = json.loads((tmp_path / "run.json").read_text())
    recorded = doc["sae_quality"]["3"]
    assert doc["saes"]["3"]["format"] == "cafe_bench" and doc["saes"]["3"]["d_in"] == 64
    ids = sorted({u.image_id for u in suite.units([3])})
    with torch.no_grad():
        h = suite.backbone.residuals(suite.images(ids), [3])[3][:, suite.backbone.n_prefix_tokens :]
        x = h.reshape(-1, h.shape[-1]).double()
        sae = suite.saes[3]
        z = torch.relu((x.float() * sae.input_scale - sae.b_dec) @ sae.W_enc + sae.b_enc)
        z = z * (z > sae.threshold)
        x_hat = (z @ sae.W_dec + sae.b_dec) / sae.input_scale
    fvu = float(((x - x_hat.double()) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    assert recorded["n_tokens"] == len(x) == len(ids) * 64
    assert recorded["fvu"] == pytest.approx(fvu, abs=2e-6) and 0.01 < fvu < 0.2
    assert recorded["l0"] == pytest.approx(float((z != 0).sum(1).double().mean()), abs=1e-3)


def test_a_wrong_b_dec_convention_is_flagged(tmp_path):
    suite = cafe_bench.load_suite("tiny")
    with torch.no_grad():
        suite.saes[1].b_dec += 3.0  # as if b_dec were applied where the SAE's library does not apply it
    with pytest.warns(UserWarning, match=r"the SAE at layer 1 leaves \d+% of the variance .* check its hook, b_dec"):
        cafe_bench.run(suite, methods=["random"], layers=[1], out=tmp_path, progress=False)
    assert json.loads((tmp_path / "run.json").read_text())["sae_quality"]["1"]["fvu"] > FVU_WARNING
