"""Tests of the HGD denoiser (``hgd.defenses.dunet``): structure, shapes, residual, saving, gradients."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import keras
import numpy as np
import pytest

from hgd.backend import cpu_flags
from hgd.defenses import dunet as dunet_module
from hgd.defenses.dunet import ResizeLike, build_dunet

LAST_ENCODER_RELU = ("enc0_relu2", "enc1_relu3", "enc2_relu3", "enc3_relu3", "enc4_relu3")
LAYER_NAME = re.compile(
    r"input|enc[0-4]_(conv|bn|relu)[1-3]|dec[0-3]_(up|concat|(conv|bn|relu)[1-3])|out_(conv|add)"
)


def _param_counts(model: keras.Model) -> tuple[int, int]:
    """Returns (trainable, non-trainable) parameter counts."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, frozen


def _images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random float32 inputs in [-1, 1] (an Inception-style model space)."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype("float32")


def _conv_filters(model: keras.Model, prefix: str) -> int:
    """Output channels of ``{prefix}_conv1``."""
    return model.get_layer(f"{prefix}_conv1").filters


def _first_conv_inputs(model: keras.Model, stage: int) -> int:
    """Input channels of decoder stage ``stage``'s first conv."""
    return model.get_layer(f"dec{stage}_conv1").kernel.shape[2]


@pytest.fixture(scope="module")
def dunet() -> keras.Model:
    """Full-width DUNET with dynamic spatial size."""
    return build_dunet()


@pytest.fixture(scope="module")
def small_dunet() -> keras.Model:
    """Quarter-width DUNET with dynamic spatial size, its output convolution made non-zero (as after
    training steps), so that the whole network shapes the output."""
    model = build_dunet(width=0.25)
    kernel = model.get_layer("out_conv").kernel
    kernel.assign(np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype("float32"))
    return model


def test_untrained_denoiser_is_the_identity() -> None:
    x = _images((2, 21, 34, 3))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(build_dunet(width=0.25)(x)), x)


def test_param_counts_match_reference(dunet: keras.Model) -> None:
    assert _param_counts(dunet) == (11_033_984, 9_728)


def test_layer_names_are_deterministic(dunet: keras.Model) -> None:
    names = [layer.name for layer in dunet.layers]
    assert names == [layer.name for layer in build_dunet().layers]
    assert len(set(names)) == len(names)
    assert [n for n in names if not LAYER_NAME.fullmatch(n)] == []


@pytest.mark.parametrize(
    ("shape", "width"),
    [((1, 33, 47, 3), 1.0), ((2, 97, 131, 3), 0.5), ((1, 299, 299, 3), 0.25)],
)
def test_output_shape_equals_input_shape(shape: tuple[int, ...], width: float) -> None:
    model = build_dunet(width=width)
    assert tuple(model(_images(shape)).shape) == shape


def test_varying_sizes_in_graph_mode(small_dunet: keras.Model) -> None:
    # predict() compiles the forward pass; after a few distinct sizes TensorFlow
    # retraces it with unknown spatial dims, so the resize must accept symbolic sizes.
    for shape in [(1, 17, 23, 3), (1, 20, 31, 3), (2, 9, 12, 3)]:
        assert small_dunet.predict(_images(shape), verbose=0).shape == shape


def test_intermediate_sizes_at_299() -> None:
    model = build_dunet(width=0.25, input_shape=(299, 299, 3))
    sizes = (299, 150, 75, 38, 19)
    for stage, size in enumerate(sizes):
        assert model.get_layer(LAST_ENCODER_RELU[stage]).output.shape[1:3] == (size, size)
    for stage, size in enumerate(sizes[:4]):
        assert model.get_layer(f"dec{stage}_up").output.shape[1:3] == (size, size)
        assert model.get_layer(f"dec{stage}_relu1").output.shape[1:3] == (size, size)
    assert model.output.shape == (None, 299, 299, 3)


def test_dae_has_no_lateral_connections(dunet: keras.Model) -> None:
    dae = build_dunet(lateral=False)
    assert _param_counts(dae)[0] < _param_counts(dunet)[0]
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in dae.layers)
    assert [_first_conv_inputs(dae, stage) for stage in range(4)] == [128, 256, 256, 256]
    assert [_first_conv_inputs(dunet, stage) for stage in range(4)] == [192, 384, 512, 512]


def test_width_scales_channels() -> None:
    half = build_dunet(width=0.5)
    assert [_conv_filters(half, f"enc{i}") for i in range(5)] == [32, 64, 128, 128, 128]
    assert [_conv_filters(half, f"dec{i}") for i in range(4)] == [32, 64, 128, 128]
    tiny = build_dunet(width=0.01)
    assert {_conv_filters(tiny, f"enc{i}") for i in range(5)} == {8}


def test_concat_is_upsampled_then_skip(dunet: keras.Model) -> None:
    for stage in range(4):
        first, second = dunet.get_layer(f"dec{stage}_concat").input
        assert first is dunet.get_layer(f"dec{stage}_up").output
        assert second is dunet.get_layer(LAST_ENCODER_RELU[stage]).output


def test_resize_like_interpolates_linearly_with_aligned_corners() -> None:
    rows, cols = np.meshgrid(np.arange(4.0), np.arange(6.0), indexing="ij")
    source = (2.0 * rows - 3.0 * cols).astype("float32")[None, :, :, None]
    target = np.zeros((1, 7, 11, 1), dtype="float32")
    resized = keras.ops.convert_to_numpy(ResizeLike()(source, target))
    out_rows, out_cols = np.meshgrid(
        np.linspace(0.0, 3.0, 7), np.linspace(0.0, 5.0, 11), indexing="ij"
    )
    np.testing.assert_allclose(resized[0, :, :, 0], 2.0 * out_rows - 3.0 * out_cols, atol=1e-5)


def test_save_and_load_round_trip(small_dunet: keras.Model, tmp_path: Path) -> None:
    path = tmp_path / "dunet.keras"
    small_dunet.save(path)
    loaded = keras.saving.load_model(path)
    x = _images((1, 25, 38, 3))
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in small_dunet.layers]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)),
        keras.ops.convert_to_numpy(small_dunet(x)),
        rtol=1e-6,
        atol=1e-6,
    )


def _input_gradient(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """Gradient of sum((model(x) - x)^2) w.r.t. x: only flows through the network body."""

    def loss(inputs):
        return keras.ops.sum(keras.ops.square(model(inputs) - inputs))

    backend = keras.backend.backend()
    if backend == "tensorflow":
        tf = pytest.importorskip("tensorflow")
        inputs = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = loss(inputs)
        return tape.gradient(value, inputs).numpy()
    if backend == "jax":
        jax = pytest.importorskip("jax")
        return np.asarray(jax.grad(loss)(x))
    pytest.skip(f"no input-gradient helper for backend {backend!r}")


def test_gradient_flows_to_input(small_dunet: keras.Model) -> None:
    x = _images((1, 19, 26, 3))
    grad = _input_gradient(small_dunet, x)
    assert grad.shape == x.shape
    assert np.all(np.isfinite(grad))
    assert np.count_nonzero(grad) > 0.9 * grad.size


@pytest.mark.parametrize("width", [0, -0.5, float("nan"), float("inf"), "1", True, None])
def test_invalid_width_raises(width: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"width={width!r}")):
        build_dunet(width=width)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "quoted"),
    [
        ({"lateral": 1}, "lateral=1"),
        ({"input_shape": (32, 32)}, "input_shape=(32, 32)"),
        ({"input_shape": (0, None, 3)}, "input_shape=(0, None, 3)"),
        ({"input_shape": (None, None, None)}, "input_shape=(None, None, None)"),
        ({"name": ""}, "name=''"),
    ],
)
def test_invalid_arguments_raise(kwargs: dict[str, object], quoted: str) -> None:
    with pytest.raises(ValueError, match=re.escape(quoted)):
        build_dunet(**kwargs)  # type: ignore[arg-type]


def test_bfloat16_body_reads_the_same_weights_and_keeps_a_float32_output(tmp_path: Path) -> None:
    """mixed_bfloat16: the same weight file loads; the body's rounding moves the correction only a little,
    and the output (input + correction) stays float32, so the image itself is not rounded to bfloat16."""
    keras.utils.set_random_seed(0)  # the initial weights too: the size of the correction depends on them
    rng = np.random.default_rng(0)
    trained = build_dunet(width=0.125)
    for w in trained.trainable_weights:
        w.assign(w + rng.normal(0, 0.05, w.shape).astype("float32"))
    trained.save_weights(tmp_path / "d.weights.h5")
    fast = build_dunet(width=0.125, dtype_policy="mixed_bfloat16")
    fast.load_weights(tmp_path / "d.weights.h5")
    assert all(w.dtype == "float32" for w in fast.weights)
    x = rng.uniform(-1, 1, (2, 48, 48, 3)).astype("float32")
    exact, rounded = np.asarray(trained(x)), np.asarray(fast(x))
    assert rounded.dtype == np.float32
    correction = exact - x
    assert np.abs(correction).mean() > 0.005  # the check below is not vacuous (0.013 with these seeds)
    assert np.abs(rounded - exact).mean() < 0.05 * np.abs(correction).mean()
    # an identity DUNET stays the exact identity: nothing of the input passes through bfloat16
    np.testing.assert_array_equal(np.asarray(build_dunet(width=0.125, dtype_policy="mixed_bfloat16")(x)), x)


def test_unknown_dtype_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype_policy='float16'"):
        build_dunet(width=0.125, dtype_policy="float16")


def _body_policy(model: keras.Model) -> str:
    return model.get_layer("enc0_conv1").dtype_policy.name


@pytest.mark.parametrize("fast", [True, False])
def test_auto_dtype_policy_follows_the_hardware(monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """'auto' computes in bfloat16 only where the hardware does it fast (elsewhere it was 8x slower)."""
    monkeypatch.setattr(dunet_module, "fast_bfloat16", lambda: fast)
    assert _body_policy(build_dunet(width=0.125, dtype_policy="auto")) == ("mixed_bfloat16" if fast else "float32")
    assert _body_policy(build_dunet(width=0.125, dtype_policy="float32")) == "float32"


def test_explicit_bfloat16_on_slow_hardware_is_kept_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(dunet_module, "fast_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hgd.defenses.dunet"):
        model = build_dunet(width=0.125, dtype_policy="mixed_bfloat16")
    assert _body_policy(model) == "mixed_bfloat16"
    assert "several times slower" in caplog.text


def test_cpu_flags_read_the_first_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()
