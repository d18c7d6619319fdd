"""The competition runner on a real multi-node Ray cluster on this machine (no mocks).

One cluster for the module: a head without CPUs (it holds the driver's ledger) and two worker nodes of
one CPU each, every process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, set by
``tests/conftest.py`` before Ray is imported: Ray otherwise binds the machine's external interface). Tests add nodes (a GPU node, a node to lose) and remove what they
added. The reference is the same run on one machine: the official CSVs must be equal byte for byte.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from hgd.cli import runner as cli
from runner_dataset import ROOT, SUBMISSIONS, make_dataset

ray = pytest.importorskip("ray", reason="the cluster extra is not installed")
from ray.cluster_utils import Cluster  # noqa: E402

pytestmark = pytest.mark.slow

LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}  # as tests/conftest.py sets
ATTACKS = ["noop", "shift", "messy", "crasher", "pixel_target"]
DEFENSES = ["pixel", "constant", "malformed", "crasher_defense"]
N, BATCH = 12, 4
OFFICIAL = ["accuracy_matrix.csv", "error_matrix.csv", "hit_target_class_matrix.csv", "all_classification.csv",
            "accuracy_on_attacks.csv", "accuracy_on_targeted_attacks.csv", "hit_target_class.csv",
            "defense_ranking.csv", "attack_ranking.csv", "targeted_attack_ranking.csv", "worst_case_scores.csv",
            "eligibility.csv", "problems.csv"]
RESULTS = ["defense_results.csv", "attack_results.csv", "targeted_attack_results.csv"]
TIMES = {"MinEvalTime", "MaxEvalTime", "MedianEvalTime", "MeanEvalTime"}


@pytest.fixture(scope="module")
def cluster():
    """A head (0 CPUs) and two one-CPU worker nodes on 127.0.0.1, stopped by its own handle."""
    assert all(os.environ.get(k) == v for k, v in LOOPBACK.items()), "tests/conftest.py sets these before Ray loads"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("cluster-data")
    make_dataset(folder, N)
    return folder


def run_args(data: pathlib.Path, out: pathlib.Path, attacks=ATTACKS, defenses=DEFENSES) -> list[str]:
    args = ["--dataset-dir", str(data), "--output-dir", str(out), "--batch-size", str(BATCH), "--eps", "cycle",
            "--no-progress"]
    for name in attacks:
        args += ["--attack", str(SUBMISSIONS / name)]
    for name in defenses:
        args += ["--defense", str(SUBMISSIONS / name)]
    return args


@pytest.fixture(scope="module")
def local_run(data, tmp_path_factory) -> pathlib.Path:
    """The reference: the same run on this machine, without the cluster."""
    out = tmp_path_factory.mktemp("local") / "out"
    assert cli.main(run_args(data, out)) == 0
    return out


def official_files(out: pathlib.Path) -> dict[str, str]:
    """The run's official CSVs; the results files without their time columns (run times differ)."""
    files = {name: (out / name).read_text() for name in OFFICIAL}
    for name in RESULTS:
        rows = list(csv.DictReader(io.StringIO((out / name).read_text())))
        files[name] = json.dumps([{k: v for k, v in row.items() if k not in TIMES} for row in rows])
    return files


def adversarial_images(out: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted((out / "adv").rglob("*.png"))}


def summary(out: pathlib.Path) -> dict:
    return json.loads((out / "run_summary.json").read_text())


def test_every_node_binds_loopback(cluster):
    nodes = [node for node in ray.nodes() if node["Alive"]]
    assert len(nodes) >= 3
    assert {node["NodeManagerAddress"] for node in nodes} == {"127.0.0.1"}
    assert cluster[0].address.startswith("127.0.0.1:")


def test_cluster_run_equals_the_local_run(cluster, data, local_run, tmp_path):
    out = tmp_path / "out"
    assert cli.main([*run_args(data, out), "--cluster", cluster[0].address]) == 0
    assert official_files(out) == official_files(local_run)
    assert adversarial_images(out) == adversarial_images(local_run)
    nodes = summary(out)["nodes"]
    assert len(nodes) == 2 and all(name.startswith("127.0.0.1/") for name in nodes)  # both workers took pieces
    assert sum(node["pieces"] for node in nodes.values()) == summary(out)["pieces_run"]
    assert summary(out)["pieces_retried"] == 0
    assert "## Cluster nodes" in (out / "report.md").read_text()
    # Rerunning on the cluster reuses every piece.
    assert cli.main([*run_args(data, out), "--cluster", cluster[0].address]) == 0
    assert summary(out)["pieces_run"] == 0 and official_files(out) == official_files(local_run)


def _harness(data: pathlib.Path, out: pathlib.Path, attacks: list[str], defenses: list[str], dispatch,
             gpu: bool = False):
    from hgd.io.datasets import read_dataset
    from hgd.runner.harness import Harness, Settings
    from hgd.runner.submissions import load_submission

    return Harness(dataset=read_dataset(data).competition_format(),
                   attacks=[load_submission(SUBMISSIONS / a) for a in attacks],
                   defenses=[load_submission(SUBMISSIONS / d) for d in defenses], dispatch=dispatch,
                   output_dir=out, settings=Settings(batch_size=BATCH, epsilon="cycle", time_limit=60, gpu=gpu,
                                                     progress=False))


def _wait_for(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_node_lost_mid_run_costs_a_retry_not_a_result(cluster, data, tmp_path):
    from hgd.runner.ray_dispatch import RayDispatch

    head, _ = cluster
    doomed = head.add_node(num_cpus=1)
    head.wait_for_nodes()
    doomed_id = doomed.node_id
    dispatch = RayDispatch("local", progress=False)
    harness = _harness(data, tmp_path / "out", ["patient"], ["pixel"], dispatch)
    result = {}
    thread = threading.Thread(target=lambda: result.update(outcome=harness.run()))
    thread.start()
    try:
        _wait_for(lambda: dispatch.running_by_node().get(doomed_id, 0) > 0, what="a piece on the doomed node")
        head.remove_node(doomed)
    finally:
        thread.join(timeout=300)
    outcome = result["outcome"]
    assert outcome.pieces_retried >= 1
    assert all(r.infra_error is None for r in outcome.attack_records.values())
    assert all(set(r.produced) == set(r.image_ids) for r in outcome.attack_records.values())
    assert all(r.error is None and r.predictions for r in outcome.defense_records.values())
    assert not any(name.endswith(doomed_id[:8]) for name in outcome.nodes)  # it finished none


def test_gpu_pieces_run_only_where_a_gpu_is(cluster, data, tmp_path):
    from hgd.runner.ray_dispatch import RayDispatch

    head, _ = cluster
    gpu_node = head.add_node(num_cpus=1, num_gpus=1)
    head.wait_for_nodes()
    try:
        outcome = _harness(data, tmp_path / "out", ["noop"], ["pixel"], RayDispatch("local", progress=False),
                           gpu=True).run()
    finally:
        head.remove_node(gpu_node)
    assert set(outcome.nodes) == {f"127.0.0.1/{gpu_node.node_id[:8]}"}
    assert outcome.pieces_run == 3 + 3


def test_a_killed_driver_resumes_without_rerunning_finished_pieces(cluster, data, tmp_path):
    out = tmp_path / "out"
    args = [*run_args(data, out, attacks=["patient"], defenses=["pixel"]), "--cluster", cluster[0].address]
    env = {**os.environ, **LOOPBACK,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-m", "hgd.cli.runner", *args], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    finished = out / "pieces" / "attacks" / "patient"
    try:
        _wait_for(lambda: len(list(finished.glob("*.json"))) >= 1, timeout=120, what="a finished piece")
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    done_before = len(list(finished.glob("*.json")))
    assert done_before < 3, "the driver finished before it was killed; make the attack more patient"
    assert cli.main(args) == 0
    assert summary(out)["pieces_reused"] == done_before
    assert summary(out)["pieces_run"] == (3 - done_before) + 3


def test_sharded_security_evaluation_equals_one_machine(cluster, defense_dir, small_source, tmp_path):
    """Each run's batches on the two worker nodes (the defense folder sent as a bundle): the same results file."""
    from hgd.evaluation.security import Evaluation, SecuritySpec

    spec = SecuritySpec(epsilons=(4,), steps=2, restarts=1, transfer_steps=2, transfer_attacks=("di_mifgsm",),
                        queries=3, limit=4)  # DI: random draws, seeded per batch wherever it runs
    results = {}
    for where in ("here", "cluster"):
        evaluation = Evaluation(defense_dir, small_source, tmp_path / where, spec, batch_size=1,
                                cluster=where == "cluster")
        evaluation.clean()
        for kind in evaluation.kinds(4):
            evaluation.run(kind, 4)
        results[where] = json.loads((tmp_path / where / "results.json").read_text())
    assert set(results["here"]["runs"]) == {"fgsm@4", "pgd@4", "transfer@4", "transfer_di_mifgsm@4", "square@4"}
    assert results["cluster"]["runs"] == results["here"]["runs"]
    assert results["cluster"]["loss_curves"] == results["here"]["loss_curves"]


def test_sharded_pair_building_equals_one_machine(cluster, small_source, tmp_path):
    from hgd.train.pairs import PairSpec, build_pairs

    spec = PairSpec(source=str(small_source), models=("efficientnet_lite0",), attacks_per_image=3,
                    validation_fraction=0.25)
    built = {}
    for where in ("here", "cluster"):
        build_pairs(small_source, tmp_path / where, spec, batch_size=2, progress=False, cluster=where == "cluster")
        folder = tmp_path / where / "adversarial"
        built[where] = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}
    assert len(built["here"]) >= 4 and built["cluster"] == built["here"]


@pytest.mark.jax
def test_data_parallel_training_as_a_ray_job_one_process_per_node(cluster, small_source, tmp_path):
    """``train fit --cluster ADDRESS --num-processes 2``: one JAX process on each worker node, coordinated
    through the first; the run folder (shared here: one machine) gets process 0's checkpoint."""
    pytest.importorskip("jax", reason="data parallelism runs on the JAX backend")
    from hgd.cli import train as train_cli
    from hgd.train.pairs import PairSpec, build_pairs

    pairs = tmp_path / "pairs"
    build_pairs(small_source, pairs, PairSpec(source=str(small_source), models=("efficientnet_lite0",),
                                              attacks_per_image=2, validation_fraction=0.5), progress=False)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["fit", str(pairs), str(run), "--guidance", "pgd", "--width", "0.125", "--crop", "64",
                        "--batch-size", "2", "--steps-per-epoch", "1", "--validation-pairs", "2", "--max-epochs", "1",
                        "--no-progress", "--cluster", cluster[0].address, "--num-processes", "2"])
    assert exit_info.value.code == 0
    assert (run / "best.weights.h5").is_file() and json.loads((run / "state.json").read_text())["epoch"] == 1


def test_without_ray_the_cluster_flag_names_the_extra(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    status = cli.main([*run_args(data, tmp_path / "out", attacks=["noop"], defenses=["pixel"]),
                       "--cluster", "auto"])
    assert status == 2
    assert '.[cluster]' in capsys.readouterr().err
    assert not (tmp_path / "out" / "pieces").exists()


@pytest.mark.docker
def test_docker_executor_inside_ray_tasks(cluster, data, tmp_path):
    """Each node runs its pieces with its own engine (here: the one ``DOCKER_HOST`` names for the whole test
    process, which the nodes inherited) and the toolkit's image; the results equal a local run's."""
    _require_docker_image("hgd-toolkit:cpu")
    attacks, defenses = ["noop", "shift", "pixel_target"], ["pixel", "constant"]
    reference, out = tmp_path / "local", tmp_path / "docker"
    assert cli.main(run_args(data, reference, attacks, defenses)) == 0
    assert cli.main([*run_args(data, out, attacks, defenses), "--cluster", cluster[0].address,
                     "--executor", "docker"]) == 0
    assert summary(out)["executor"] == "docker" and summary(out)["pieces_run"] == 9 + 18
    assert official_files(out) == official_files(reference)


def _require_docker_image(image: str) -> None:
    """Skips (fails where ``HGD_REQUIRE_DOCKER=1``, as in CI) unless an engine answers with ``image``."""
    try:
        import docker

        client = docker.from_env()
        client.images.get(image)
        client.close()
    except Exception as error:  # noqa: BLE001 - no SDK, no engine, no image: the same verdict
        if os.environ.get("HGD_REQUIRE_DOCKER") == "1":
            pytest.fail(f"HGD_REQUIRE_DOCKER=1 but no engine with {image}: {error}")
        pytest.skip(f"no Docker engine with {image}: {error}")
