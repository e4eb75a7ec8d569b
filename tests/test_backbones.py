"""EfficientNet-B7 in this pipeline, on the CPU at a tiny size: it builds with the parameter
count bench/backbones.py reports, trains one step, saves and loads to the same logits; and
bench/backbones.py itself: its counts, its FLOP counter (scaling with the image area, the
grouped-convolution backward corrected) and its refusal of a tag timm does not have."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # `cxrfusion` and `bench` from this checkout, under plain `pytest` too
    sys.path.insert(0, str(ROOT))

from bench.backbones import Counter, markdown  # noqa: E402
from bench.backbones import main as backbones_main  # noqa: E402
from cxrfusion.model import Classifier, load_model, model_config  # noqa: E402
from cxrfusion.scoring import forward  # noqa: E402

SCRIPT = ROOT / "bench" / "backbones.py"
TEXT_DIM = 768
SIDE, BATCH = 32, 2  # batch norm in training mode needs 2 images
# what `bench/backbones.py` reports for B7 (docs/backbones.md); tf_efficientnet_b7 (the one with
# ImageNet weights) is the same network with TensorFlow's "same" padding: the same parameters
B7_BACKBONE_PARAMS = 63_786_960
B7_FUSION_PARAMS = 64_639_698
B7_FEATURES = 2560
B7 = ["efficientnet_b7", "tf_efficientnet_b7.ra_in1k"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these steps are tiny, and 2 threads spinning on 2 cores that
    something else also uses ran them several times slower (bench/common.py: --tiny)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (BATCH, SIDE, SIDE), dtype=torch.uint8, generator=g)
    return images, torch.randn(BATCH, TEXT_DIM, generator=g), torch.tensor([0, 1])


@pytest.fixture(scope="module", params=B7)
def trained(request):
    """A B7 fusion classifier after one Adam step on a tiny batch, with what it was before."""
    torch.manual_seed(0)
    model = Classifier("fusion", TEXT_DIM, request.param)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    images, text, labels = batch(0)
    loss = F.cross_entropy(forward(model, images, text, amp=False), labels)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return {"name": request.param, "model": model, "before": before, "params": params,
            "loss": loss.item()}


def test_b7_builds_with_the_counts_the_bench_reports(trained):
    model = trained["model"]
    assert model.cnn.num_features == B7_FEATURES
    assert sum(p.numel() for p in model.cnn.parameters()) == B7_BACKBONE_PARAMS
    head = (B7_FEATURES + TEXT_DIM) * 256 + 256 + 256 * 2 + 2  # Linear(3328, 256), Linear(256, 2)
    assert trained["params"] == B7_FUSION_PARAMS == B7_BACKBONE_PARAMS + head


def test_b7_trains_one_step(trained):
    assert math.isfinite(trained["loss"])
    after = trained["model"].state_dict()
    for key in ("cnn.conv_stem.weight", "cnn.blocks.6.0.conv_pw.weight", "head.0.weight"):
        assert not torch.equal(after[key], trained["before"][key]), key
    # batch norm's running statistics moved too (training mode)
    assert not torch.equal(after["cnn.bn1.running_mean"], trained["before"]["cnn.bn1.running_mean"])


def test_b7_saves_and_loads_to_the_same_logits(trained, tmp_path):
    from safetensors.torch import save_file

    model = trained["model"].eval()
    config = model_config(model, TEXT_DIM, trained["name"], SIDE, image_fit="pad")
    # as cxrfusion.training.save_model writes them
    save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()},
              tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps(config))
    loaded, read = load_model(tmp_path)
    assert read["backbone"] == trained["name"] and not loaded.training
    images, text, _ = batch(1)
    with torch.no_grad():
        expected = forward(model, images, text, amp=False)
        got = forward(loaded, images, text, amp=False)
    assert torch.equal(got, expected)


def run_bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # as one_thread
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_bench_on_tinynet_counts_parameters_and_flops():
    import timm

    proc = run_bench("--models", "tinynet_e.in1k", "--sides", "64", "128", "--steps", "1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout)  # stdout holds the JSON object and nothing else
    m = result["models"]["tinynet_e.in1k"]
    assert m["backbone_params"] == sum(
        p.numel() for p in timm.create_model("tinynet_e.in1k", num_classes=0).parameters())
    assert m["num_features"] == 1280 and m["input_size"] == [3, 106, 106]
    assert set(m["sides"]) == {"64", "106", "128"}
    small, large = m["sides"]["64"], m["sides"]["128"]
    # twice the side, four times the pixels: convolutions dominate, so about four times the FLOPs
    assert large["forward_flops"] / small["forward_flops"] == pytest.approx(4, rel=0.15)
    assert large["train_step_flops"] / small["train_step_flops"] == pytest.approx(4, rel=0.15)
    for s in m["sides"].values():
        assert s["forward_gmacs"] == pytest.approx(s["forward_flops"] / 2e9, rel=1e-3)
        # backward = two products per forward one; torch's stock formula makes it ~26 x forward
        assert 2.5 < s["train_vs_forward"] < 3.5
        assert s["train_step_flops_torch_formula"] > 2 * s["train_step_flops"]
    assert m["sides"]["128"]["image_cache_bytes"] == 7466 * 128 * 128
    assert result["ratios"] == {}  # one model: nothing to compare with
    step = m["cpu_train_step"]
    assert step["loss_finite"] and step["median_s"] > 0 and (step["batch"], step["side"]) == (2, 64)

    table = markdown(result)
    assert "| `tinynet_e.in1k` | yes | 761,972 |" in table and "106 (default)" in table
    assert "CPU train step" in table


def test_conv_backward_counts_a_depthwise_weight_gradient_once():
    from torch.utils.flop_counter import FlopCounterMode

    def count(mode, conv):
        x = torch.randn(2, 8, 16, 16, requires_grad=True)
        with mode:
            conv(x).sum().backward()
        return mode.get_total_flops()

    for groups in (1, 8):  # dense: torch's formula is right; depthwise: its weight gradient is 8x
        conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
        forward_flops = 2 * 2 * 16 * 16 * 8 * (8 // groups) * 9
        ours, stock = Counter(), FlopCounterMode(display=False)
        assert count(ours, conv) == 3 * forward_flops
        assert count(stock, conv) == (2 + groups) * forward_flops
        assert ours.stock_flops == count(FlopCounterMode(display=False), conv)


def test_bench_refuses_a_tag_timm_does_not_have(capsys):
    # timm 1.0.31 has no ImageNet weights for efficientnet_b7 itself: they are tf_efficientnet_b7's
    with pytest.raises(SystemExit) as stop:
        backbones_main(["--models", "tinynet_e.in1k", "efficientnet_b7.ra_in1k"])
    assert stop.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and "tf_efficientnet_b7.ra_in1k" in err
