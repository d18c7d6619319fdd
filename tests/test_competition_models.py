"""The NIPS 2017 competition's four target classifiers (``hgd.zoo.inception``, ``hgd.zoo.resnet``)
and their weight converters, against files written here in the publishers' exact formats.

No real weights are reachable offline, so every converter is checked by a round trip: random
tensors under the real names and shapes go in (a TF1 name-based checkpoint, a Keras 2 ``.h5``, a
zip-format torch file written without torch), and the same tensors must come out in the right
Keras layers. Architectures are checked by parameter counts against published figures and, for
the Inception nets, numerically against Keras applications' ports of the same slim nets.
Each big model is built once for the module (plus, once each, the two Keras applications references).
"""

from __future__ import annotations

import collections
import pickle
import re
import zipfile

import keras
import numpy as np
import pytest

from competition_sources import (BN_TENSORS, random_checkpoint, random_resnext_state, slim_variables,
                                 torchvision_resnext101_64x4d, write_keras2_h5, write_tf1_checkpoint, write_torch_zip)
from hgd.zoo.pth import UnsafePickleError
from hgd.zoo import inception, resnet, slim
from hgd.zoo.torch_zip import load_zip_state_dict

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

SIZE = 299


def as_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def params(weights: list) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


# ------------------------------------------------------------------------------ one build per model


@pytest.fixture(scope="module")
def inception_v3() -> keras.Model:
    return inception.build_inception_v3(input_shape=(SIZE, SIZE, 3), aux_logits=True)


@pytest.fixture(scope="module")
def inception_v3_deployed() -> keras.Model:
    """Without the auxiliary head: what the toolkit runs."""
    return inception.build_inception_v3()


@pytest.fixture(scope="module")
def inception_resnet_v2() -> keras.Model:
    return inception.build_inception_resnet_v2(input_shape=(SIZE, SIZE, 3), aux_logits=True)


@pytest.fixture(scope="module")
def resnet152() -> keras.Model:
    return resnet.build_resnet152()


@pytest.fixture(scope="module")
def resnext101() -> keras.Model:
    return resnet.build_resnext101_64x4d()


# ------------------------------------------------------------------------------ architectures


def test_inception_v3_matches_the_slim_checkpoint_size(inception_v3):
    # What is counted: every model variable of TF-Slim's inception_v3(num_classes=1001) with its
    # AuxLogits head, i.e. the checkpoint's variables but global_step: conv weights, the two logits
    # convs' biases, BatchNorm beta / moving_mean / moving_variance (no gamma).
    # 96 conv+BN (4 variables each) + 2 biased logits convs (2 each) = 388 variables;
    # 27,182,194 = Keras applications' InceptionV3 (1000 classes, no aux head, same variables:
    # 23,851,784, `keras.applications.InceptionV3().count_params()`) + the background class
    # (2048 + 1) + the aux head (768*128 + 3*128 + 5*5*128*768 + 3*768 + 768*1001 + 1001 = 3,328,361).
    assert sum(len(layer.weights) for layer in inception_v3.layers) == 388
    assert inception_v3.count_params() == 27_182_194


def test_inception_resnet_v2_matches_the_slim_checkpoint_size(inception_resnet_v2):
    # What is counted: every model variable of TF-Slim's inception_resnet_v2(num_classes=1001,
    # create_aux_logits=True), i.e. the checkpoint's variables but global_step (same kinds as above;
    # the 40 residual "up" 1x1 convs and both fully connected logits carry biases).
    # 59,244,594 = Keras applications' InceptionResNetV2 (a port of this slim net, 1000 classes, no aux
    # head: 55,873,736, `keras.applications.InceptionResNetV2().count_params()`) + the background class
    # (1536 + 1) + the aux head (1088*128 + 3*128 + 5*5*128*768 + 3*768 + 768*1001 + 1001 = 3,369,321).
    assert sum(len(layer.weights) for layer in inception_resnet_v2.layers) == 908
    assert inception_resnet_v2.count_params() == 59_244_594


def test_resnet152_matches_keras_applications(resnet152):
    # Keras applications table: ResNet152 60.4M parameters; exactly 60,419,944 in
    # `keras.applications.ResNet152().summary()` (60,268,520 trainable + 151,424 BatchNorm statistics).
    assert resnet152.count_params() == 60_419_944
    assert params(resnet152.trainable_weights) == 60_268_520


def test_resnext101_matches_torchvision(resnext101):
    # torchvision docs, ResNeXt101_64X4D_Weights.IMAGENET1K_V1: num_params 83,455,272 (model.parameters(),
    # so BatchNorm running statistics excluded: Keras' non-trainable weights).
    assert params(resnext101.trainable_weights) == 83_455_272


@pytest.mark.parametrize("fixture, guide, shape", [
    ("inception_v3", inception.INCEPTION_V3_GUIDE_LAYER, (8, 8, 2048)),
    ("inception_resnet_v2", inception.INCEPTION_RESNET_V2_GUIDE_LAYER, (8, 8, 1536)),
    ("resnet152", resnet.GUIDE_LAYER, (10, 10, 2048)),
    ("resnext101", resnet.GUIDE_LAYER, (10, 10, 2048)),
])
def test_guide_layer_and_logits_at_299(request, fixture, guide, shape):
    model = request.getfixturevalue(fixture)
    tapped = keras.Model(model.input, [model.get_layer(guide).output, model.outputs[0]])
    guide_map, logits = tapped.compute_output_spec(keras.KerasTensor((2, SIZE, SIZE, 3)))
    assert tuple(guide_map.shape) == (2, *shape)
    assert tuple(logits.shape) == (2, 1000)


_KERAS_AUTO_NAME = re.compile(r"^(conv2d|batch_normalization|re_lu|concatenate|add|dense|max_pooling2d|"
                              r"average_pooling2d|global_average_pooling2d|zero_padding2d|reshape|flatten|dropout)(_\d+)?$")


@pytest.mark.parametrize("fixture", ["inception_v3", "inception_resnet_v2", "resnet152", "resnext101"])
def test_every_layer_is_named_by_the_builder(request, fixture):
    model = request.getfixturevalue(fixture)
    assert not [layer.name for layer in model.layers if _KERAS_AUTO_NAME.match(layer.name)]


def test_layer_names_do_not_depend_on_the_build(inception_v3, inception_v3_deployed):
    with_aux = [layer.name for layer in inception_v3.layers if not layer.name.startswith(slim.AUX_SCOPE)]
    assert with_aux[:-1] == [layer.name for layer in inception_v3_deployed.layers]  # the last: the aux logits
    assert inception_v3.output_names == [inception.LOGITS_LAYER, inception.AUX_LOGITS_LAYER]


# ------------------------------------------------------------------------------ TF-Slim checkpoints

# Real variable names and shapes of the published checkpoints (slim's scopes, quirks included).
REAL_VARIABLES = {
    inception.INCEPTION_V3_SCOPE: {
        "InceptionV3/Conv2d_1a_3x3/weights": (3, 3, 3, 32),
        "InceptionV3/Conv2d_1a_3x3/BatchNorm/moving_variance": (32,),
        "InceptionV3/Mixed_5c/Branch_1/Conv2d_0b_1x1/weights": (1, 1, 256, 48),
        "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights": (5, 5, 48, 64),
        "InceptionV3/Mixed_6a/Branch_0/Conv2d_1a_1x1/weights": (3, 3, 288, 384),
        "InceptionV3/Mixed_6e/Branch_2/Conv2d_0e_1x7/BatchNorm/beta": (192,),
        "InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1/weights": (3, 1, 384, 384),
        "InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1/weights": (3, 1, 384, 384),
        "InceptionV3/AuxLogits/Conv2d_2a_5x5/weights": (5, 5, 128, 768),
        "InceptionV3/AuxLogits/Conv2d_2b_1x1/biases": (1001,),
        "InceptionV3/Logits/Conv2d_1c_1x1/weights": (1, 1, 2048, 1001),
    },
    inception.INCEPTION_RESNET_V2_SCOPE: {
        "InceptionResnetV2/Mixed_5b/Branch_0/Conv2d_1x1/weights": (1, 1, 192, 96),
        "InceptionResnetV2/Repeat/block35_10/Conv2d_1x1/biases": (320,),
        "InceptionResnetV2/Repeat_1/block17_20/Branch_1/Conv2d_0b_1x7/weights": (1, 7, 128, 160),
        "InceptionResnetV2/Repeat_2/block8_9/Conv2d_1x1/weights": (1, 1, 448, 2080),
        "InceptionResnetV2/Block8/Branch_1/Conv2d_0c_3x1/weights": (3, 1, 224, 256),
        "InceptionResnetV2/Conv2d_7b_1x1/BatchNorm/moving_mean": (1536,),
        "InceptionResnetV2/AuxLogits/Conv2d_1b_1x1/weights": (1, 1, 1088, 128),
        "InceptionResnetV2/AuxLogits/Logits/weights": (768, 1001),
        "InceptionResnetV2/Logits/Logits/biases": (1001,),
    },
}


@pytest.fixture(scope="module")
def v3_checkpoint(inception_v3, tmp_path_factory):
    return random_checkpoint(inception_v3, inception.INCEPTION_V3_SCOPE, tmp_path_factory.mktemp("v3-ckpt"))


def assert_filled_from(model: keras.Model, scope: str, tensors: dict[str, np.ndarray]) -> None:
    variables = slim_variables(model, scope)
    assert set(variables) <= set(tensors)
    for name, variable in variables.items():
        np.testing.assert_array_equal(as_numpy(variable), tensors[name], err_msg=name)


@pytest.mark.parametrize("fixture, scope", [("inception_v3", inception.INCEPTION_V3_SCOPE),
                                            ("inception_resnet_v2", inception.INCEPTION_RESNET_V2_SCOPE)])
def test_slim_names_are_the_checkpoints(request, fixture, scope):
    model = request.getfixturevalue(fixture)
    shapes = {name: tuple(v.shape) for name, v in slim_variables(model, scope).items()}
    assert {name: shapes.get(name) for name in REAL_VARIABLES[scope]} == REAL_VARIABLES[scope]
    assert not any(name.endswith("BatchNorm/gamma") for name in shapes)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(bn.epsilon == 1e-3 and not bn.scale and bn.center for bn in bns)


def test_inception_v3_checkpoint_round_trip(inception_v3, v3_checkpoint):
    prefix, tensors = v3_checkpoint
    slim.load_slim_checkpoint(inception_v3, prefix, inception.INCEPTION_V3_SCOPE)
    assert_filled_from(inception_v3, inception.INCEPTION_V3_SCOPE, tensors)


def test_deployed_inception_v3_skips_the_aux_head(inception_v3_deployed, v3_checkpoint):
    prefix, tensors = v3_checkpoint
    slim.load_slim_checkpoint(inception_v3_deployed, prefix, inception.INCEPTION_V3_SCOPE)
    assert_filled_from(inception_v3_deployed, inception.INCEPTION_V3_SCOPE, tensors)
    assert not any(layer.name.startswith("AuxLogits") for layer in inception_v3_deployed.layers)


def test_inception_resnet_v2_checkpoint_round_trip(inception_resnet_v2, tmp_path):
    prefix, tensors = random_checkpoint(inception_resnet_v2, inception.INCEPTION_RESNET_V2_SCOPE, tmp_path)
    slim.load_slim_checkpoint(inception_resnet_v2, prefix, inception.INCEPTION_RESNET_V2_SCOPE)
    assert_filled_from(inception_resnet_v2, inception.INCEPTION_RESNET_V2_SCOPE, tensors)


def test_checkpoint_mismatches_are_errors(inception_v3_deployed, v3_checkpoint, tmp_path):
    _, tensors = v3_checkpoint
    with pytest.raises(ValueError, match="outside scope"):
        slim.load_slim_checkpoint(inception_v3_deployed, v3_checkpoint[0], "InceptionResnetV2")
    missing = dict(tensors)
    del missing["InceptionV3/Mixed_7c/Branch_3/Conv2d_0b_1x1/BatchNorm/moving_mean"]
    write_tf1_checkpoint(tmp_path / "missing.ckpt", missing)
    with pytest.raises(ValueError, match="Mixed_7c_Branch_3_Conv2d_0b_1x1_bn', 'moving_mean'"):
        slim.load_slim_checkpoint(inception_v3_deployed, tmp_path / "missing.ckpt", inception.INCEPTION_V3_SCOPE)
    gamma = {**tensors, "InceptionV3/Conv2d_1a_3x3/BatchNorm/gamma": np.ones(32, np.float32)}
    write_tf1_checkpoint(tmp_path / "gamma.ckpt", gamma)
    with pytest.raises(ValueError, match="gamma"):
        slim.load_slim_checkpoint(inception_v3_deployed, tmp_path / "gamma.ckpt", inception.INCEPTION_V3_SCOPE)


# ------------------------------------------------------------------------------ numerics vs Keras applications


def _randomize_bn_statistics(model: keras.Model, rng: np.random.Generator) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, n).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.1, n).astype(np.float32))


@pytest.mark.parametrize("fixture, reference, guide, keras_guide", [
    ("inception_v3_deployed", "InceptionV3", inception.INCEPTION_V3_GUIDE_LAYER, "mixed10"),
    ("inception_resnet_v2", "InceptionResNetV2", inception.INCEPTION_RESNET_V2_GUIDE_LAYER, "conv_7b_ac"),
])
def test_same_function_as_keras_applications_port(request, fixture, reference, guide, keras_guide):
    """Keras applications' InceptionV3 / InceptionResNetV2 are ports of these slim nets (1000 classes, no aux
    head): with its weights copied over in graph order, guide maps and logits agree, and our 1000 logits
    are slim's 1001 without index 0."""
    model = request.getfixturevalue(fixture)
    keras.utils.set_random_seed(1)
    ref = getattr(keras.applications, reference)(weights=None, classifier_activation=None, input_shape=(SIZE, SIZE, 3))
    rng = np.random.default_rng(1)
    _randomize_bn_statistics(ref, rng)
    ours = [layer for layer in model.layers if layer.weights and not layer.name.startswith(slim.AUX_SCOPE)]
    theirs = [layer for layer in ref.layers if layer.weights]
    assert len(ours) == len(theirs)
    for mine, source in zip(ours[:-1], theirs[:-1]):
        mine.set_weights(source.get_weights())
    kernel, bias = theirs[-1].get_weights()
    background = rng.normal(size=(kernel.shape[0], 1)).astype(np.float32)
    top_kernel = np.concatenate([background, kernel], axis=1)
    top_bias = np.concatenate([[7.0], bias]).astype(np.float32)
    ours[-1].set_weights([top_kernel.reshape(ours[-1].get_weights()[0].shape), top_bias])

    x = rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    squeeze = "Logits_SpatialSqueeze" if fixture == "inception_v3_deployed" else "Logits_Logits_fc"
    tapped = keras.Model(model.input, [model.get_layer(n).output for n in (guide, squeeze, inception.LOGITS_LAYER)])
    guide_map, all_logits, logits = (as_numpy(t) for t in tapped(x, training=False))
    ref_tapped = keras.Model(ref.input, [ref.get_layer(keras_guide).output, ref.output])
    ref_guide, ref_logits = (as_numpy(t) for t in ref_tapped(x, training=False))
    np.testing.assert_allclose(guide_map, ref_guide, rtol=1e-3, atol=1e-4 * np.abs(ref_guide).max())
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-3, atol=1e-4 * np.abs(ref_logits).max())
    np.testing.assert_array_equal(logits, all_logits[:, 1:])


# ------------------------------------------------------------------------------ ResNet152: Keras 2 .h5


def test_resnet152_loads_keras2_h5(resnet152, tmp_path):
    rng = np.random.default_rng(2)
    values = {layer.name: [rng.normal(size=v.shape).astype(np.float32) for v in layer.weights]
              for layer in resnet152.layers if layer.weights}
    write_keras2_h5(tmp_path / "resnet152_weights_tf_dim_ordering_tf_kernels.h5", resnet152, values)
    resnet152.load_weights(tmp_path / "resnet152_weights_tf_dim_ordering_tf_kernels.h5")
    for name, expected in values.items():
        for got, want in zip(resnet152.get_layer(name).get_weights(), expected):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_resnet152_flips_rgb_to_bgr(resnet152):
    assert resnet152.layers[1].name == "rgb_to_bgr"
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(as_numpy(resnet152.layers[1](x)), x[..., ::-1])


# ------------------------------------------------------------------------------ ResNeXt101: zip-format torch file


def test_torchvision_spec_has_the_published_size():
    spec = torchvision_resnext101_64x4d()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    parameters = [shape for name, (shape, _) in spec.items() if not name.endswith(buffers)]
    assert sum(int(np.prod(s)) for s in parameters) == 83_455_272  # torchvision docs, IMAGENET1K_V1 num_params


@pytest.fixture(scope="module")
def resnext_state() -> dict[str, np.ndarray]:
    return random_resnext_state(3)


def test_resnext101_zip_round_trip(resnext101, resnext_state, tmp_path, monkeypatch):
    path = tmp_path / "resnext101_64x4d-173b62eb.pth"
    write_torch_zip(path, resnext_state, monkeypatch, archive="resnext101_64x4d-173b62eb")
    read = load_zip_state_dict(path)
    assert list(read) == list(resnext_state)
    for name, value in resnext_state.items():
        np.testing.assert_array_equal(read[name], value, err_msg=name)

    resnet.load_torchvision_resnext(resnext101, path)
    s = resnext_state
    oihw_to_hwio = (2, 3, 1, 0)
    expected = {
        "conv1_conv": [s["conv1.weight"].transpose(oihw_to_hwio)],
        "conv1_bn": [s[f"bn1.{k}"] for k in BN_TENSORS],
        "conv2_block1_0_conv": [s["layer1.0.downsample.0.weight"].transpose(oihw_to_hwio)],
        "conv3_block1_0_bn": [s[f"layer2.0.downsample.1.{k}"] for k in BN_TENSORS],
        "conv4_block23_2_conv": [s["layer3.22.conv2.weight"].transpose(oihw_to_hwio)],
        "conv5_block3_3_bn": [s[f"layer4.2.bn3.{k}"] for k in BN_TENSORS],
        "predictions": [s["fc.weight"].T, s["fc.bias"]],
    }
    for layer, values in expected.items():
        for got, want in zip(resnext101.get_layer(layer).get_weights(), values, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=layer)


def test_resnext_converter_refuses_unknown_tensors(resnext_state):
    with pytest.raises(ValueError, match="does not use"):
        resnet.keras_weights_from_torchvision({**resnext_state, "layer5.0.conv1.weight": np.zeros(1, np.float32)})


def test_grouped_kernel_layout_matches_pytorch():
    """The converter's OIHW -> HWIO on a grouped conv computes PyTorch's grouped convolution."""
    rng = np.random.default_rng(4)
    groups, cin, cout = 4, 8, 12
    weight = rng.normal(size=(cout, cin // groups, 3, 3)).astype(np.float32)  # PyTorch layout
    x = rng.normal(size=(1, 5, 5, cin)).astype(np.float32)
    layer = keras.layers.Conv2D(cout, 3, groups=groups, use_bias=False)
    layer.build(x.shape)
    layer.set_weights([weight.transpose(2, 3, 1, 0)])
    want = np.zeros((1, 3, 3, cout), np.float32)
    for o in range(cout):
        g = o // (cout // groups)
        patch_in = x[0, :, :, g * (cin // groups):(g + 1) * (cin // groups)]
        for i in range(3):
            for j in range(3):
                want[0, i, j, o] = np.sum(patch_in[i:i + 3, j:j + 3, :] * weight[o].transpose(1, 2, 0))
    np.testing.assert_allclose(as_numpy(layer(x)), want, rtol=1e-4, atol=1e-4)


def test_zip_reader_refuses_foreign_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(w=Evil()), protocol=2))
    with pytest.raises(UnsafePickleError):
        load_zip_state_dict(path)
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("something/else.txt", "")
    with pytest.raises(ValueError, match="data.pkl"):
        load_zip_state_dict(tmp_path / "empty.zip")
