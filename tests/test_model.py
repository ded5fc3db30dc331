import contextlib

import numpy as np
import pytest
import torch

from xecmae.config import MAEConfig
from xecmae.configload import validate
from xecmae.detector import geometry as geo
from xecmae.detector.normalize import Normalizer
from xecmae.models import XEC_MAE, XECEncoder, build_mae
from xecmae.models.blocks import GRN, DepthwiseConv2d, HexGraphConv, _GRNFunction, grn_reference
from xecmae.models.faces import FaceMapper
from xecmae.models.masking import hide, random_masking
from xecmae.models.spec import EncoderConfig, MaskingSpec
from xecmae.train.losses import LossSettings, mae_loss

NORM = Normalizer()


def masking(ratio: float, time_scale: float = 1.0) -> MaskingSpec:
    return MaskingSpec(mask_ratio=ratio, time_mask_ratio_scale=time_scale)


def fake_event_batch(batch: int = 3, seed: int = 0, dead_fraction: float = 0.02):
    """Raw-looking npho/time with dead and dim sensors, normalized."""
    gen = torch.Generator().manual_seed(seed)
    npho = torch.distributions.Exponential(1 / 400).sample((batch, geo.N_SENSORS)) - 5
    time = torch.rand(batch, geo.N_SENSORS, generator=gen) * 4e-8
    dead = torch.rand(batch, geo.N_SENSORS, generator=gen) < dead_fraction
    npho[dead] = 1e10
    time[dead] = 1e10
    return NORM(npho, time)


def tiny(**model) -> XEC_MAE:
    torch.manual_seed(0)
    return build_mae(validate({"model": {"size": "tiny", **model}}))


@pytest.mark.parametrize("model,outer_shape", [
    ({"outer_mode": "finegrid"}, (45, 72)),
    ({"outer_mode": "finegrid", "outer_fine_pool": [3, 3]}, (15, 24)),
    ({"outer_mode": "split"}, (9, 24)),
])
@pytest.mark.parametrize("channels", [["npho", "time"], ["npho"]])
def test_decoder_output_shapes_follow_the_specification(model, outer_shape, channels):
    mae = tiny(**model, predict_channels=channels)
    x, valid = fake_event_batch(2)
    out = mae(x, valid)
    c = len(channels)
    expected = {"inner": (2, c, 93, 44), "us": (2, c, 24, 6), "ds": (2, c, 24, 6), "outer": (2, c, *outer_shape),
                "top": (2, c, 73), "bottom": (2, c, 73)}
    assert {k: tuple(v.shape) for k, v in out.faces.items()} == expected
    assert out.pred.shape == (2, geo.N_SENSORS, c)
    assert torch.isfinite(out.pred).all()


def test_encoder_returns_six_tokens_and_rejects_bad_widths():
    enc = XECEncoder(NORM, EncoderConfig(size="tiny", encoder_dim=64))
    x, valid = fake_event_batch(2)
    assert enc(x, valid).shape == (2, 6, 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        EncoderConfig(encoder_dim=100)  # the spec checks it, once, before any model is built


def test_the_model_takes_its_spec_whole():
    cfg = validate({"model": {"size": "tiny", "encoder_dim": 96, "num_heads": 2, "mask_ratio": 0.3},
                    "training": {"time": {"mask_ratio_scale": 2.0}}}, MAEConfig)
    mae = XEC_MAE(NORM, cfg.model, masking(0.3, 2.0))
    assert mae.encoder.encoder_dim == 96 and mae.encoder.fusion.layers[0].self_attn.num_heads == 2
    assert build_mae(cfg).masking == mae.masking  # the builder reads the same two YAML keys
    with pytest.raises(ValueError, match="less than 1"):
        mae.masking.mask_ratio = 1.5  # a new ratio is checked where the spec is
    with pytest.raises(AttributeError):
        mae.mask_ratio = 0.05  # not silently ignored


@pytest.mark.parametrize("pool", [None, (3, 3)])
def test_every_sensor_gets_its_own_prediction_back(pool):
    """Decoder grids holding each cell's owner value map back onto all 4760 sensors."""
    mapper = FaceMapper(NORM, EncoderConfig(outer_fine_pool=pool))
    x, valid = fake_event_batch(2, dead_fraction=0.0)
    faces = mapper.to_faces(x, torch.ones_like(valid))
    as_output = {k: (v[:, :2] if v.dim() == 4 else v[..., :2].transpose(1, 2)) for k, v in faces.items()}
    owner = torch.as_tensor(geo.outer_fine_map().copy())
    fine = x[:, owner].permute(0, 3, 1, 2)  # (B, 2, 45, 72): every fine cell holds its owner's value
    as_output["outer"] = torch.nn.functional.avg_pool2d(fine, pool) if pool else fine
    back = mapper.to_sensors(as_output)
    assert back.shape == (2, geo.N_SENSORS, 2)
    non_outer = torch.as_tensor(geo.face_of_sensor() != 3)
    torch.testing.assert_close(back[:, non_outer], x[:, non_outer])
    outer = torch.as_tensor(geo.outer_ids().copy())
    if pool is None:  # every outer sensor, the 18 centre ones included, recovers its value
        torch.testing.assert_close(back[:, outer], x[:, outer], rtol=1e-6, atol=1e-6)
    else:  # pooled: a sensor gets the overlap-weighted mean of the cells it touches
        assert torch.isfinite(back[:, outer]).all()
        corner = int(np.flatnonzero(geo.outer_ids() == geo.outer_coarse_map()[0, 0])[0])
        # PMT 4092 owns fine rows 0-4: all of pooled cell (0, 0) and two of the three rows of
        # cell (1, 0), whose third row belongs to 4093: (9 a + 6 (6 a + 3 b) / 9) / 15
        expected = (13 * x[:, 4092] + 2 * x[:, 4093]) / 15
        torch.testing.assert_close(back[:, outer[corner]], expected, rtol=1e-5, atol=1e-6)


def test_outer_npho_is_spread_in_photons_not_in_log_space():
    mapper = FaceMapper(NORM, EncoderConfig())
    npho = torch.zeros(1, geo.N_SENSORS)
    corner = int(geo.outer_coarse_map()[0, 0])
    npho[0, corner] = 1500.0
    x, valid = NORM(npho, torch.zeros_like(npho))
    cell = mapper.to_faces(x, valid)["outer"][0, 0, 0, 0]
    assert cell == pytest.approx(float(NORM.npho_forward(torch.tensor(100.0))), rel=1e-5)  # 1500 / 15 cells


def test_masking_hides_the_stated_number_and_never_an_invalid_sensor():
    x, valid = fake_event_batch(4, dead_fraction=0.05)
    hidden = random_masking(valid, masking(0.6), generator=torch.Generator().manual_seed(1))
    n_valid = valid[..., 0].sum(1)
    expected = torch.tensor([int(n * 0.6) for n in n_valid.tolist()])
    torch.testing.assert_close(hidden.sum(1), expected)
    assert not (hidden & ~valid[..., 0]).any()
    x_in, valid_in = hide(x, valid, hidden, NORM.sentinel_npho, NORM.sentinel_time)
    assert (x_in[hidden] == torch.tensor([NORM.sentinel_npho, NORM.sentinel_time])).all()
    assert not valid_in[hidden].any()
    torch.testing.assert_close(x_in[~hidden], x[~hidden])


def test_dim_sensors_are_maskable_but_dead_ones_are_not():
    npho = torch.full((1, geo.N_SENSORS), 50.0)  # all dim: valid npho, invalid time
    npho[0, :100] = 1e10
    _x, valid = NORM(npho, torch.zeros_like(npho))
    hidden = random_masking(valid, masking(0.5))
    assert hidden.sum() == (geo.N_SENSORS - 100) // 2 and not hidden[0, :100].any()


def test_mask_ratio_scale_prefers_sensors_with_a_valid_time():
    _x, valid = fake_event_batch(8, dead_fraction=0.0)
    timed = valid[..., 1]
    gen = torch.Generator().manual_seed(3)
    plain = random_masking(valid, masking(0.3), gen)
    biased = random_masking(valid, masking(0.3, 3.0), gen)
    share = lambda h: (h & timed).sum() / h.sum()  # noqa: E731
    assert share(biased) > share(plain) + 0.1
    assert biased.sum() == plain.sum()


def test_same_seed_gives_same_mask_and_output():
    mae = tiny()
    x, valid = fake_event_batch(2)
    outs = []
    for _ in range(2):
        torch.manual_seed(5)
        outs.append(mae(x, valid, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(outs[0].hidden, outs[1].hidden)
    torch.testing.assert_close(outs[0].pred, outs[1].pred, rtol=0, atol=0)
    torch.manual_seed(5)
    other = mae(x, valid, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(other.hidden, outs[0].hidden)


@pytest.mark.parametrize("settings", [
    {"predict_channels": ["npho", "time"]},
    {"predict_channels": ["npho"]},
    {"predict_channels": ["npho", "time"], "outer_mode": "split", "auto": True},
])
def test_every_parameter_receives_a_gradient(settings):
    auto = settings.pop("auto", False)
    torch.manual_seed(0)
    cfg = validate({"model": {"size": "tiny", **settings}, "training": {"auto_channel_weight": auto}})
    mae = build_mae(cfg)
    x, valid = fake_event_batch(3)
    out = mae(x, valid)
    loss, _ = mae_loss(out.pred, x, valid, out.hidden, NORM, LossSettings(), mae.channel_log_var)
    loss.backward()
    missing = [n for n, p in mae.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    silent = [n for n, p in mae.named_parameters() if p.grad.abs().sum() == 0 and "gamma" not in n]
    assert not silent, silent  # GRN gammas start at zero; everything else must move


@pytest.mark.parametrize("face", geo.FACE_NAMES)
def test_a_whole_dead_face_gives_finite_outputs_and_loss(face):
    mae = tiny()
    npho = torch.rand(2, geo.N_SENSORS) * 500
    time = torch.rand(2, geo.N_SENSORS) * 1e-8
    dead = torch.as_tensor(geo.face_of_sensor() == geo.FACE_NAMES.index(face))
    npho[:, dead] = 1e10
    time[:, dead] = float("nan")
    x, valid = NORM(npho, time)
    out = mae(x, valid)
    loss, stats = mae_loss(out.pred, x, valid, out.hidden, NORM, LossSettings(track_metrics=True,
                                                                              track_mae_rmse=True))
    loss.backward()
    assert torch.isfinite(out.pred).all() and torch.isfinite(loss)
    assert stats[f"loss_{face}"][0] == 0
    assert stats[f"mae_{face}_npho"][1] == 0  # nothing scored on the dead face


def test_encoder_keys_start_with_encoder():
    keys = tiny().state_dict().keys()
    encoder_keys = set(XECEncoder(NORM, EncoderConfig(size="tiny")).state_dict())
    assert {k.removeprefix("encoder.") for k in keys if k.startswith("encoder.")} == encoder_keys
    assert all(k.startswith(("encoder.", "decoders.")) for k in keys)


def test_grn_fast_backward_matches_its_definition():
    torch.manual_seed(0)
    for dims, shape in [((1, 2), (2, 5, 4, 6)), ((1,), (2, 9, 6))]:
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        gamma = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
        beta = torch.randn(shape[-1], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b, c, d=dims: _GRNFunction.apply(a, b, c, d, 1e-6), (x, gamma, beta))
        grn = GRN(shape[-1], dims).double()
        with torch.no_grad():
            grn.gamma.copy_(gamma)
            grn.beta.copy_(beta)
        torch.testing.assert_close(grn(x), grn_reference(x, gamma, beta, dims))


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_depthwise_convolution_backward_matches_pytorchs(layout):
    torch.manual_seed(0)
    fast = DepthwiseConv2d(8, kernel_size=7).to(memory_format=layout)
    reference = torch.nn.Conv2d(8, 8, 7, padding=3, groups=8).to(memory_format=layout)
    assert fast.state_dict().keys() == reference.state_dict().keys()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(3, 8, 13, 9).to(memory_format=layout).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(3, 8, 13, 9)
    fast(x).backward(grad)
    reference(x_ref).backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(fast.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, reference.bias.grad, rtol=1e-4, atol=1e-4)
    small = DepthwiseConv2d(3, kernel_size=5).double()
    inputs = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (inputs,))


def test_flop_count_charges_a_depthwise_weight_gradient_like_its_forward():
    from torch.utils.flop_counter import FlopCounterMode

    from xecmae.models.flops import count_flops

    x = torch.randn(2, 16, 12, 12, requires_grad=True)
    depthwise = torch.randn(16, 1, 7, 7, requires_grad=True)
    forward = 2 * 2 * 16 * 12 * 12 * 49  # a multiply and an add per tap, channel and output pixel
    step = lambda: torch.nn.functional.conv2d(x, depthwise, padding=3, groups=16).sum().backward()  # noqa: E731
    assert count_flops(step) == 3 * forward  # forward, input gradient, weight gradient
    dense = torch.randn(8, 16, 3, 3, requires_grad=True)
    step = lambda: torch.nn.functional.conv2d(x, dense, padding=1).sum().backward()  # noqa: E731
    pytorch = FlopCounterMode(display=False)
    with pytorch:
        step()
    assert count_flops(step) == pytorch.get_total_flops()  # where groups = 1 the two agree


def test_operator_count_counts_kernels_not_views():
    from xecmae.models.flops import count_operators

    x = torch.randn(4, 6)
    assert count_operators(lambda: x.view(24)) == 0  # a view launches nothing
    assert count_operators(lambda: (x * 2 + 1).sum()) == 3
    assert count_operators(lambda: x.transpose(0, 1).contiguous()) == 1  # the copy, not the transpose


def test_hex_graph_convolution_uses_one_weight_per_direction():
    conv = HexGraphConv(3)
    x = torch.randn(2, 73, 3)
    expected = conv.bias.expand(2, 73, 3).clone()
    for node, row in enumerate(geo.hex_graph().neighbours):
        for etype, other in enumerate(row):
            if other >= 0:
                expected[:, node] += conv.weight[etype] * x[:, other]
    torch.testing.assert_close(conv(x), expected)


@contextlib.contextmanager
def count_host_reads():
    """Count the tensor calls that would wait for a GPU: .item(), .cpu(), .tolist(), .numpy(),
    bool(), nonzero() and boolean-mask indexing."""
    counts = {"n": 0}
    names = ["item", "cpu", "tolist", "numpy", "__bool__", "nonzero"]
    originals = {n: getattr(torch.Tensor, n) for n in names}
    original_getitem = torch.Tensor.__getitem__

    def wrap(fn):
        def counted(self, *a, **k):
            counts["n"] += 1
            return fn(self, *a, **k)
        return counted

    def getitem(self, index):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            counts["n"] += 1
        return original_getitem(self, index)

    for n in names:
        setattr(torch.Tensor, n, wrap(originals[n]))
    torch.Tensor.__getitem__ = getitem
    try:
        yield counts
    finally:
        for n in names:
            setattr(torch.Tensor, n, originals[n])
        torch.Tensor.__getitem__ = original_getitem


def test_forward_and_loss_never_read_back_to_the_host():
    mae = tiny()
    x, valid = fake_event_batch(2)
    settings = LossSettings(track_mae_rmse=True, track_metrics=True, npho_alpha=0.5, intensity_nbins=4)
    with count_host_reads() as counts:
        out = mae(x, valid)
        loss, _ = mae_loss(out.pred, x, valid, out.hidden, NORM, settings)
        loss.backward()
    assert counts["n"] == 0


def test_host_read_counter_can_see_a_read():
    with count_host_reads() as counts:
        torch.ones(3).sum().item()
        torch.ones(3)[torch.ones(3, dtype=torch.bool)]
    assert counts["n"] == 2


def test_base_size_has_the_specified_scale():
    cfg = validate({"model": {"size": "base"}})
    mae = build_mae(cfg)
    total = sum(p.numel() for p in mae.parameters())
    fusion = sum(p.numel() for p in mae.encoder.fusion.parameters())
    encoder = sum(p.numel() for p in mae.encoder.parameters())
    assert 40e6 < total < 50e6
    assert fusion / encoder > 0.9
    assert np.isclose(cfg.model.encoder_dim, 1024)
