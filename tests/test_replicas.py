"""Replicas trained side by side: seeds, independence from R, divergence of one, resume, the generator file."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.common.errors import GanpipeError, Interrupted
from pipeline.common.params import VariantParams
from pipeline.gan import threads
from pipeline.gan.generator_file import load_generator, load_generators, save_generators
from pipeline.gan.replicas import replica_seed, replica_seeds
from pipeline.gan.trainer import NonFiniteTraining, Trainer
from tests.conftest import REPO, repo_params


def variant(name: str, **changes) -> VariantParams:
    return VariantParams.model_validate({**repo_params()["variants"][name], **changes})


@pytest.fixture(scope="module")
def mnist_tensors(small_mnist):
    x = torch.from_numpy(small_mnist.x_train.reshape(len(small_mnist.x_train), -1)).float() / 255.0
    return x, torch.from_numpy(small_mnist.y_train.astype(np.int64))


def test_replica_seeds_are_distinct_across_experiments_and_independent_of_the_count():
    seeds = {(s, r): replica_seed(s, r) for s in range(100) for r in range(16)}
    assert len(set(seeds.values())) == len(seeds)  # no two (seed, replica) pairs share a stream
    assert replica_seeds(7, 8)[:3] == replica_seeds(7, 3)  # replica r's seed does not depend on R
    assert all(0 <= s < 2**31 for s in seeds.values())


# Float tolerance for "the same replica": replica r inside a stack of 4 and alone run the same math, but
# batched matmuls (vmap over 4) and single ones (a plain call) may sum in a different order, so the
# weights agree to float32 rounding grown over 50 steps of a chaotic game, not bit for bit.
WEIGHT_ATOL = 2e-5  # measured: 2e-7 (vanilla) and 1.4e-6 (cgan) on CPU


@pytest.mark.parametrize("name", ["vanilla", "cgan"])  # wgan's batched path: the resume test
def test_replica_r_of_four_equals_the_same_replica_trained_alone(mnist_tensors, name):
    x, y = mnist_tensors
    v = variant(name)
    seeds = replica_seeds(0, 4)
    together = Trainer(v, x, y, seeds, batched=True)
    alone = Trainer(v, x, y, seeds[2:3], batched=False)  # what params.replicas = 1 runs
    together.advance(50)
    alone.advance(50)
    a, b = together.replica_generator(2), alone.replica_generator(0)
    worst = max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))
    print(f"{name}: largest weight difference after 50 iterations {worst:.2e}")
    assert worst < WEIGHT_ATOL, f"replica 2 drifted by {worst} from its solo run"
    # And it is not trivially equal to a different replica: the seeds matter.
    other = together.replica_generator(1)
    assert max((pa - po).abs().max().item() for pa, po in zip(a.parameters(), other.parameters())) > 100 * WEIGHT_ATOL
    la, lb = together.read_losses()[2], alone.read_losses()[0]
    assert la == pytest.approx(lb, rel=1e-3, abs=1e-4)


def test_one_diverging_replica_is_dropped_and_the_others_are_untouched(mnist_tensors):
    x, y = mnist_tensors
    v = variant("vanilla-ns")
    seeds = replica_seeds(0, 3)
    clean, hit = Trainer(v, x, y, seeds), Trainer(v, x, y, seeds)
    for trainer in (clean, hit):
        trainer.advance(20)
        trainer.read_losses()
    # Corrupt replica 1's critic for real: one weight becomes Inf, so its next losses are NaN/Inf.
    with torch.no_grad():
        hit.critic.params["net.0.weight"][1, 0, 0] = float("inf")
    clean.advance(20)
    hit.advance(20)
    losses = hit.read_losses()
    assert sorted(losses) == [0, 2] and hit.live == [0, 2]
    assert hit.diverged[1].step == 40 and "NaN/Inf" in str(hit.diverged[1])
    # The NaNs stayed in replica 1: replicas 0 and 2 are bit-identical to the run that was not hit.
    clean_losses = clean.read_losses()
    for r in (0, 2):
        assert losses[r] == clean_losses[r]
        for pc, ph in zip(clean.replica_generator(r).parameters(), hit.replica_generator(r).parameters()):
            assert torch.equal(pc, ph)
    # Training goes on without it, and its slot stays empty in the results.
    hit.advance(20)
    assert sorted(hit.read_losses()) == [0, 2]
    gens = hit.generators()
    assert gens[1] is None and all(torch.isfinite(p).all() for g in (gens[0], gens[2]) for p in g.parameters())


def test_when_every_replica_diverges_training_stops(mnist_tensors):
    x, y = mnist_tensors
    trainer = Trainer(variant("vanilla"), x, y, replica_seeds(0, 2))
    with torch.no_grad():
        trainer.generator.params["net.0.weight"].fill_(float("nan"))
    trainer.advance(2)
    with pytest.raises(NonFiniteTraining):
        trainer.read_losses()
    assert sorted(trainer.diverged) == [0, 1]


def test_resume_of_all_replicas_is_bit_identical(mnist_tensors, tmp_path):
    x, y = mnist_tensors
    v = variant("wgan", n_critic=2)
    seeds = replica_seeds(3, 3)
    straight = Trainer(v, x, y, seeds)
    straight.advance(20)
    straight.read_losses()
    straight.advance(20)
    first = Trainer(v, x, y, seeds)
    first.advance(20)
    first.read_losses()
    with torch.no_grad():  # one replica diverged before the checkpoint: resume must keep it out
        first.critic.params["net.2.bias"][0] = float("nan")
        straight.critic.params["net.2.bias"][0] = float("nan")
    torch.save(first.state_dict(), tmp_path / "ckpt.pt")
    resumed = Trainer(v, x, y, seeds)
    resumed.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=False))
    resumed.advance(20)
    assert resumed.live == straight.live == [0, 1, 2]
    for r in range(3):
        for ps, pr in zip(straight.replica_generator(r).parameters(), resumed.replica_generator(r).parameters()):
            assert torch.equal(ps, pr) or (ps.isnan().any() and r == 0)
    assert sorted(straight.read_losses()) == sorted(resumed.read_losses()) == [1, 2]
    # A checkpoint taken after the drop resumes with two replicas and the divergence on record.
    torch.save(straight.state_dict(), tmp_path / "ckpt2.pt")
    again = Trainer(v, x, y, seeds)
    again.load_state_dict(torch.load(tmp_path / "ckpt2.pt", weights_only=False))
    assert again.live == [1, 2] and 0 in again.diverged
    again.advance(5)
    straight.advance(5)
    assert again.read_losses() == straight.read_losses()


def test_generator_file_round_trip_and_errors(tmp_path):
    v = variant("cgan")
    trainer = Trainer(v, torch.rand(64, 784), torch.randint(0, 10, (64,)), [11, 12, 13])
    gens = trainer.generators()
    path = tmp_path / "generator.pt"
    save_generators(path, [gens[0], None, gens[2]], v, [11, 12, 13], [None, "replica 1 diverged", None])
    loaded, variant_back = load_generators(path)
    assert variant_back == v and [r.seed for r in loaded] == [11, 12, 13]
    assert loaded[1].generator is None and loaded[1].diverged == "replica 1 diverged"
    z, label = torch.randn(5, v.z_dim), torch.eye(10)[[3] * 5]
    assert torch.equal(loaded[2].generator(z, label), gens[2].eval()(z, label))
    assert load_generator(path)[0].n_classes == 10
    with pytest.raises(GanpipeError, match=r"replica 1 diverged.*Pick a replica that finished: \[0, 2\]"):
        load_generator(path, 1)
    with pytest.raises(GanpipeError, match="replicas 0 to 2"):
        load_generator(path, 5)
    with pytest.raises(GanpipeError, match="dvc repro train"):
        load_generators(tmp_path / "missing.pt")
    old = tmp_path / "old.pt"
    torch.save({"variant": v.model_dump(mode="json"), "state_dict": gens[0].state_dict()}, old)
    with pytest.raises(GanpipeError, match="before replicas existed"):
        load_generators(old)


def test_thread_policy_takes_the_idle_cores_and_its_share_under_a_queue():
    assert threads.resolve(3, "cpu") == 3  # an explicit count is used as given
    assert threads.resolve("auto", "cuda") == 1
    assert threads.policy(cores=2, workers=0, load=0.1) == 2  # alone on an idle machine: every core
    assert threads.policy(cores=2, workers=2, load=0.0) == 1  # `dvc queue start -j 2`: half each
    assert threads.policy(cores=16, workers=3, load=0.0) == 5
    assert threads.policy(cores=2, workers=0, load=7.0) == 1  # a busy machine: one thread, never zero
    assert threads.policy(cores=8, workers=0, load=3.2) == 5
    assert threads.queue_workers() == 0  # pytest runs under no queue worker
    # Real processes named like `dvc exp queue-worker`: a training started under one of two workers
    # sees both.
    probe = "from pipeline.gan import threads; print(threads.queue_workers())"
    launcher = f"import subprocess, sys; sys.exit(subprocess.run([sys.executable, '-c', {probe!r}]).returncode)"
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exp", "queue-worker", "dvc-exp-x-2"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", launcher, "exp", "queue-worker", "dvc-exp-x-1"],
            cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout
    finally:
        idle.kill()
        idle.wait()
    assert int(out) >= 2  # this machine may run other queues too; ours are at least these two


@pytest.mark.slow
def test_tracked_training_resumes_into_its_runs_and_fails_only_the_diverged_replica(
    tmp_path, small_mnist, instrument, monkeypatch
):
    import mlflow

    from pipeline.common.params import parse_params
    from pipeline.runs.training_run import finish_run, train_tracked
    from tests.conftest import tiny_params

    for var in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    raw = tiny_params(60)
    raw.update(model="vanilla-ns", replicas=2)
    params = parse_params(raw)
    classifier, ref = instrument

    def interrupt(trainer, step):
        if step == 40:  # after the checkpoint at 20, before the one at 40: as if the process were killed
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="checkpoint at generator iteration 20"):
        train_tracked(params, tmp_path, small_mnist, classifier, ref, trainer_hook=interrupt)
    (first,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                if "mlflow.parentRunId" not in r.data.tags]
    assert first.info.status == "KILLED"  # an interrupted training never poses as finished
    first_parent = first.info.run_id

    def corrupt(trainer, step):
        if step == 40:  # replica 1's critic gets an Inf weight: its losses go NaN in the next window
            with torch.no_grad():
                trainer.critic.params["net.0.weight"][trainer.live.index(1), 0, 0] = float("inf")

    # The resumed attempt runs under a new DVC experiment name: parent and children take it on.
    monkeypatch.setenv("DVC_EXP_NAME", "resumed-exp")
    result = train_tracked(params, tmp_path, small_mnist, classifier, ref, trainer_hook=corrupt)
    assert result.resumed_from == 20 and result.run_id == first_parent
    assert list(result.diverged) == [1] and "replica 1 of model vanilla-ns diverged" in result.diverged[1]
    finish_run(result, params.variant.iterations)

    client = mlflow.MlflowClient()
    parent = client.get_run(result.run_id)
    assert parent.info.run_name == "resumed-exp-vanilla-ns" and parent.data.tags["replicas"] == "2"
    assert parent.data.tags["dvc_exp_name"] == "resumed-exp"
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    by_replica = {int(c.data.tags["replica"]): c for c in children}
    assert sorted(by_replica) == [0, 1]
    assert [by_replica[r].info.run_id for r in range(2)] == result.replica_run_ids
    for r, child in by_replica.items():
        assert child.info.run_name == f"resumed-exp-vanilla-ns-r{r}" and child.data.tags["dvc_exp_name"] == "resumed-exp"
        assert child.data.params["variant/objective"] == "bce_logits" and child.data.params["replica"] == str(r)
        assert child.data.params["replica_seed"] == child.data.tags["replica_seed"] == str(result.seeds[r])
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "train/d_loss")]
        assert steps[:2] == [20, 40]  # the resumed run continued the same history
    assert by_replica[1].info.status == "FAILED"
    assert "became NaN/Inf by generator iteration 60" in by_replica[1].data.tags["failure_reason"]
    child = by_replica[0]
    assert child.info.status == "FINISHED" and np.isfinite(child.data.metrics["train/final_d_loss"])
    assert client.get_metric_history(child.info.run_id, "train/fld")[-1].step == 60
    assert any(a.path == "images" for a in client.list_artifacts(child.info.run_id))  # its sample grids
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list")
    assert [m.source_run_id for m in models] == [result.replica_run_ids[0]]


@pytest.mark.slow
def test_ctrl_c_while_the_first_sample_grid_is_drawn_ends_the_parent_and_every_replica_run_killed(
    tmp_path, small_mnist, instrument, monkeypatch
):
    """The step-0 grid is drawn after the runs open and before the first step; a Ctrl-C there once left
    the parent to MLflow's exit handler (FINISHED) and the replicas' runs RUNNING."""
    import mlflow

    from pipeline.common.params import parse_params
    from pipeline.gan import sampling
    from pipeline.runs.training_run import train_tracked
    from tests.conftest import tiny_params

    for var in ("MLFLOW_TRACKING_URI", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    raw = tiny_params(60)
    raw.update(replicas=2)

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling, "sample_grid", ctrl_c)
    with pytest.raises(Interrupted, match="interrupted before its first checkpoint"):
        train_tracked(parse_params(raw), tmp_path, small_mnist, *instrument)
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(found) == 3 and {r.info.status for r in found} == {"KILLED"}  # the parent and both replicas
    assert mlflow.active_run() is None
