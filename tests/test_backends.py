"""The library runs unchanged on the JAX backend (the lent GPU machines have no TensorFlow).

Keras fixes its backend at import, so the JAX side runs in a subprocess with
``KERAS_BACKEND=jax`` and writes its outputs; this process (TensorFlow)
computes the same things and compares.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Computes, on whichever backend is active: the lite0 classifier's logits on four
# sample images, an input gradient through it, and a seeded DUNET on an odd size.
PROBE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from hgd.backend import forward_fn, input_gradient
    from hgd.defenses.dunet import build_dunet
    from hgd.io.images import iter_batches, list_input_files
    from hgd.zoo import get_model

    x = next(iter_batches(list_input_files("sample_data/images")[:4], 4)).images.astype("float32")
    classifier = get_model("efficientnet_lite0").build_classifier()
    logits = forward_fn(classifier)(x)
    _, grad = input_gradient(lambda z: keras.ops.sum(classifier(z)[:, 7]), x[:2])
    dunet = build_dunet(width=0.25)
    rng = np.random.RandomState(0)  # backend-independent weights: seeded kernels, default BatchNorm
    dunet.set_weights([rng.normal(0, 0.05, w.shape).astype("float32") if w.ndim == 4 else w
                       for w in dunet.get_weights()])
    noise = np.random.RandomState(0).randn(2, 37, 53, 3).astype("float32")
    np.savez(sys.argv[1], backend=keras.backend.backend(), logits=logits, grad=grad,
             dunet_out=forward_fn(dunet)(noise))
    """
)


def _run_probe(backend: str, out: pathlib.Path) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", PROBE, str(out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def test_jax_backend_matches_tensorflow(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    assert keras.backend.backend() == "tensorflow"
    jax_out = _run_probe("jax", tmp_path / "jax.npz")
    tf_out = _run_probe("tensorflow", tmp_path / "tf.npz")
    assert str(jax_out["backend"]) == "jax" and str(tf_out["backend"]) == "tensorflow"
    np.testing.assert_array_equal(jax_out["logits"].argmax(1), tf_out["logits"].argmax(1))
    np.testing.assert_allclose(jax_out["logits"], tf_out["logits"], atol=5e-3, rtol=1e-3)
    cos = np.sum(jax_out["grad"] * tf_out["grad"]) / (np.linalg.norm(jax_out["grad"]) * np.linalg.norm(tf_out["grad"]))
    assert cos > 0.99, f"input gradients disagree between backends (cosine {cos:.4f})"
    assert np.any(tf_out["grad"] != 0)
    assert jax_out["dunet_out"].shape == (2, 37, 53, 3)
    assert not np.allclose(tf_out["dunet_out"], 0)
    np.testing.assert_allclose(jax_out["dunet_out"], tf_out["dunet_out"], atol=1e-3, rtol=1e-3)


# A model whose weights change between calls (a denoiser attacked while it trains): the compiled
# forward pass and attack gradient must use the weights of each call, not those of the first trace.
WEIGHTS_PROBE = textwrap.dedent(
    """
    import sys
    import keras
    import numpy as np
    from hgd.attacks import KerasModel
    from hgd.backend import forward_fn

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    x = np.random.RandomState(0).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    attacked, forward = KerasModel(model), forward_fn(model)
    before = [attacked.logits(x), forward(x), attacked.objective_gradient(x, np.array([1, 2]), False)[1]]
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([-3 * kernel, bias + 1])
    after = [attacked.logits(x), forward(x), attacked.objective_gradient(x, np.array([1, 2]), False)[1]]
    expected = x.reshape(2, -1) @ (-3 * kernel) + bias + 1
    np.savez(sys.argv[1], backend=keras.backend.backend(), expected=expected, before_logits=before[0],
             after_logits=after[0], after_forward=after[1], before_grad=before[2], after_grad=after[2])
    """
)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_compiled_calls_read_the_current_weights(backend: str, tmp_path: pathlib.Path) -> None:
    if backend == "jax":
        pytest.importorskip("jax", reason="the JAX backend is tested where jax is installed (the dev extras install it)")
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", WEIGHTS_PROBE, str(tmp_path / "out.npz")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(np.load(tmp_path / "out.npz"))
    assert str(out["backend"]) == backend
    assert not np.allclose(out["before_logits"], out["expected"], atol=1e-2)
    np.testing.assert_allclose(out["after_logits"], out["expected"], rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(out["after_forward"], out["expected"], rtol=1e-4, atol=1e-2)
    assert not np.allclose(out["after_grad"], out["before_grad"])
