"""params.yaml validation: every mistake is refused before any work, naming the key path and the fix."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest
import yaml

from pipeline.common.errors import GanpipeError
from pipeline.common.params import Params, VariantParams, flatten, load_params, parse_params

from .conftest import REPO, repo_params

STAGES = ["download", "prepare", "stack", "evaluator", "calibrate", "train", "evaluate", "report"]
VALID_MODELS = (
    "cgan, cwgan-gp, dcgan, dcgan-half-d, dcgan-quarter-d, dcgan-wgan-gp, pacdcgan2, pacdcgan2-half-d, "
    "pacdcgan2-quarter-d, pacdcgan3-half-d, pacdcgan3-quarter-d, pacdcgan4-half-d, pacdcgan4-quarter-d, pacgan2, "
    "sngan, vanilla, vanilla-ns, wgan, wgan-gp, wgan-lr1e-4, wgan-schedule"
)
FIX = "Fix params.yaml (or the `-S key=value` you passed to `dvc exp run`) and run again."


def refused(change: Callable[[dict], object]) -> str:
    """The message for the repo's params.yaml with one change made to it."""
    raw = copy.deepcopy(repo_params())
    change(raw)
    with pytest.raises(GanpipeError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "\n" not in message, message  # one paragraph
    return message


def test_the_repository_params_are_valid_and_flatten_to_dotted_keys():
    params = parse_params(repo_params())
    assert isinstance(params, Params)
    assert params.variant == params.variants[params.model]
    flat = flatten(params)
    assert flat["variants.wgan.n_critic"] == 5
    assert flat["variants.wgan.betas"] == [0.9, 0.999]
    assert flat["evaluate.verdict.min_share_ratio"] == 0.25


def test_an_unknown_model_lists_the_valid_ones_and_suggests_the_closest():
    message = refused(lambda p: p.update(model="wgn"))
    assert message.startswith('params.yaml has a problem: `model` is "wgn", which is not a preset under `variants`')
    assert 'did you mean "wgan"?' in message
    assert f"the valid models are: {VALID_MODELS}." in message
    assert "`dvc exp run -S model=wgan`" in message
    assert message.endswith(FIX)

    message = refused(lambda p: p.update(model="resnet"))
    assert "did you mean" not in message
    assert f"the valid models are: {VALID_MODELS}." in message


@pytest.mark.parametrize(
    "value, shown", [(7, "7"), (None, "null")], ids=["number", "null"]
)
def test_a_model_that_is_not_a_name_lists_the_valid_ones(value, shown):
    message = refused(lambda p: p.update(model=value))
    assert f"`model` is {shown}, not the name of a preset under `variants`" in message
    assert f"the valid models are: {VALID_MODELS}." in message


def test_a_missing_model_lists_the_valid_ones():
    message = refused(lambda p: p.pop("model"))
    assert f"`model` is missing; the valid models are: {VALID_MODELS}." in message


@pytest.mark.parametrize(
    "section, typo, key",
    [
        ((), "modle", "model"),
        (("train",), "log_evry", "log_every"),
        (("variants", "wgan"), "n_critc", "n_critic"),
        (("evaluate", "verdict"), "diversity_factr", "diversity_factor"),
        (("download",), "retry", "retries"),
    ],
)
def test_a_misspelt_key_gets_did_you_mean_at_any_depth(section, typo, key):
    def misspell(p: dict) -> None:
        mapping = p
        for part in section:
            mapping = mapping[part]
        mapping[typo] = mapping.pop(key)

    message = refused(misspell)
    path = ".".join((*section, typo))
    right = ".".join((*section, key))
    assert message.startswith(f"params.yaml has a problem: unknown key `{path}` (did you mean `{right}`?)")
    where = f"under `{'.'.join(section)}`" if section else "at the top level"
    assert f"the keys accepted {where} are: " in message and key in message
    assert "is missing" not in message  # the misspelling is reported once, not also as a missing key


def test_an_unknown_key_without_a_close_match_lists_the_accepted_keys():
    message = refused(lambda p: p["train"].update(warmup=10))
    assert "unknown key `train.warmup`;" in message and "did you mean" not in message
    assert "device, log_every, checkpoint_every, sample_every, eval_every, eval_samples, threads" in message


def set_variant(name: str, **values) -> Callable[[dict], None]:
    return lambda p: p["variants"][name].update(values)


@pytest.mark.parametrize(
    "change, expected",
    [
        (set_variant("vanilla", lr="fast"), '`variants.vanilla.lr` is "fast", but it must be a number > 0'),
        (set_variant("vanilla", lr=0), "`variants.vanilla.lr` is 0, but it must be a number > 0"),
        (set_variant("wgan", lr=-5e-5), "`variants.wgan.lr` is -5e-05, but it must be a number > 0"),
        (set_variant("wgan", lr=float("inf")), "`variants.wgan.lr` is inf, but it must be a number > 0"),
        (set_variant("wgan", n_critic=0), "`variants.wgan.n_critic` is 0, but it must be a whole number >= 1"),
        (set_variant("wgan", n_critic=2.5), "`variants.wgan.n_critic` is 2.5, but it must be a whole number >= 1"),
        (set_variant("wgan", n_critic=True), "`variants.wgan.n_critic` is true, but it must be a whole number >= 1"),
        (set_variant("wgan", clip=0), "`variants.wgan.clip` is 0, but it must be null or a number > 0"),
        (set_variant("wgan", clip="small"), '`variants.wgan.clip` is "small", but it must be null or a number > 0'),
        (set_variant("cgan", batch_size=0), "`variants.cgan.batch_size` is 0, but it must be a whole number >= 1"),
        (set_variant("cgan", iterations=0), "`variants.cgan.iterations` is 0, but it must be a whole number >= 1"),
        (set_variant("cgan", conditional="maybe"), '`variants.cgan.conditional` is "maybe", but it must be true or false'),
        (
            set_variant("wgan", objective="wasserstien"),
            '`variants.wgan.objective` is "wasserstien", but it must be one of minimax, bce_logits, wasserstein, hinge',
        ),
        (set_variant("wgan", optimizer="sgd"), '`variants.wgan.optimizer` is "sgd", but it must be one of adam, rmsprop'),
        (lambda p: p["download"].update(retries=0), "`download.retries` is 0, but it must be a whole number >= 1"),
        (lambda p: p["download"].update(timeout_s=-1), "`download.timeout_s` is -1, but it must be a number > 0"),
        (lambda p: p.update(seed=-1), "`seed` is -1, but it must be a whole number >= 0"),
        (
            lambda p: p["evaluator"].update(train_subset="all"),
            '`evaluator.train_subset` is "all", but it must be null or a whole number >= 1',
        ),
        (
            lambda p: p["evaluate"]["verdict"].update(diversity_factor=1.5),
            "`evaluate.verdict.diversity_factor` is 1.5, but it must be a number > 0 and < 1",
        ),
        (
            lambda p: p["train"].update(device="tpu"),
            '`train.device` is "tpu", but the device must be auto, cpu, cuda or cuda:N (e.g. cuda:0)',
        ),
        (
            lambda p: p["train"].update(checkpoint_every=150),
            "`train.checkpoint_every` is 150, but it must be a multiple of train.log_every (100)",
        ),
    ],
)
def test_a_wrong_type_or_out_of_range_value_names_the_key_path_and_the_accepted_values(change, expected):
    message = refused(change)
    assert message == f"params.yaml has a problem: {expected}. Nothing was run. {FIX}"


@pytest.mark.parametrize("betas", [[0.9], [0.9, 0.999, 0.5], [0.5, 1.0], [-0.1, 0.9], 0.9, "0.9,0.999"])
def test_betas_of_the_wrong_length_or_range_are_explained_as_a_whole(betas):
    message = refused(set_variant("vanilla", betas=betas))
    assert "`variants.vanilla.betas` is " in message
    assert "but it must be a list of two numbers (beta1 and beta2), each >= 0 and < 1, e.g. [0.9, 0.999]" in message
    assert "betas.0" not in message and "betas.1" not in message  # no internal tuple indices


def test_a_wasserstein_variant_without_clipping_is_refused_with_the_reason():
    message = refused(set_variant("wgan", clip=None))
    assert "`variants.wgan.clip` is null, but a wasserstein critic needs weight clipping" in message
    assert "(the WGAN paper uses 0.01)" in message


@pytest.mark.parametrize(
    "change, expected",
    [
        (
            set_variant("wgan-gp", gradient_penalty=None),
            "`variants.wgan-gp.clip` is null, but a wasserstein critic needs weight clipping or a gradient penalty "
            "to keep it Lipschitz: set clip to a number > 0 (the WGAN paper uses 0.01) or gradient_penalty to a "
            "number > 0 (WGAN-GP uses 10)",
        ),
        (
            set_variant("wgan-gp", clip=0.01),
            "`variants.wgan-gp.clip` is 0.01, but the gradient penalty replaces weight clipping",
        ),
        (
            set_variant("vanilla-ns", gradient_penalty=10.0),
            "`variants.vanilla-ns.gradient_penalty` is 10.0, but the gradient penalty (WGAN-GP) pushes a wasserstein "
            "critic's gradient norm to 1 and is not defined for the bce_logits objective",
        ),
        (
            set_variant("pacgan2", pack=3),
            "`variants.pacgan2.pack` is 3, but D judges the batch in packs of 3 samples, so batch_size (64) must be "
            "a multiple of pack",
        ),
        (set_variant("wgan-gp", pack=2), "`variants.wgan-gp.pack` is 2, but packing with a gradient penalty is not supported"),
        (set_variant("pacgan2", pack=0), "`variants.pacgan2.pack` is 0, but it must be a whole number >= 1"),
        (set_variant("dcgan", arch="resnet"), '`variants.dcgan.arch` is "resnet", but it must be one of mlp, dcgan'),
        (set_variant("sngan", spectral_norm="yes please"), "`variants.sngan.spectral_norm` is \"yes please\", but it must be true or false"),
        (set_variant("wgan-gp", gradient_penalty=-1), "`variants.wgan-gp.gradient_penalty` is -1, but it must be null or a number > 0"),
    ],
    ids=["no-constraint", "clip-and-penalty", "penalty-without-critic", "pack-vs-batch", "pack-with-penalty",
         "pack-zero", "arch", "spectral-norm", "negative-penalty"],
)
def test_preset_mechanisms_that_do_not_fit_together_are_refused_with_the_fix(change, expected):
    message = refused(change)
    assert expected in message, message


def test_every_preset_lists_every_field_and_the_new_presets_carry_the_papers_settings():
    params = parse_params(repo_params())
    assert all(set(raw) == set(VariantParams.model_fields) for raw in repo_params()["variants"].values())
    gp, pac, sn = params.variants["wgan-gp"], params.variants["pacgan2"], params.variants["sngan"]
    assert (gp.gradient_penalty, gp.clip, gp.n_critic, gp.lr, gp.betas) == (10.0, None, 5, 1e-4, (0.5, 0.9))
    assert params.variants["cwgan-gp"].model_copy(update={"conditional": False}) == gp
    assert (pac.pack, pac.objective) == (2, "bce_logits")
    assert pac.model_copy(update={"pack": 1}) == params.variants["vanilla-ns"]  # only the packing differs
    assert (sn.spectral_norm, sn.objective) == (True, "hinge")
    dcgan, dcgan_gp = params.variants["dcgan"], params.variants["dcgan-wgan-gp"]
    assert (dcgan.arch, dcgan.objective, dcgan_gp.arch, dcgan_gp.gradient_penalty) == ("dcgan", "bce_logits", "dcgan", 10.0)
    # every MLP preset keeps the seed's budget
    assert {v.iterations for v in params.variants.values() if v.arch == "mlp"} == {20000}


def test_a_missing_value_is_refused_because_there_are_no_defaults():
    message = refused(lambda p: p["variants"]["cgan"].pop("hidden"))
    assert "`variants.cgan.hidden` is missing; add it as a whole number >= 1 (there are no defaults" in message

    message = refused(lambda p: p.pop("report"))
    assert "`report` is missing; add it as a mapping with the keys neighbour_panel" in message


def test_a_section_or_preset_that_is_not_a_mapping_lists_its_keys():
    message = refused(lambda p: p["variants"].update(wgan=5))
    assert "`variants.wgan` is 5, but it must be a mapping with the keys objective, conditional, z_dim" in message

    message = refused(lambda p: p.update(train=None))
    assert "`train` is null, but it must be a mapping with the keys device, log_every" in message


def test_every_problem_is_reported_at_once_numbered():
    def break_three(p: dict) -> None:
        p["model"] = "gan"
        p["variants"]["vanilla"]["lr"] = "fast"
        p["train"]["log_evry"] = p["train"].pop("log_every")

    message = refused(break_three)
    assert message.startswith("params.yaml has 3 problems: (1) `model` is \"gan\"")
    assert "(2) " in message and "(3) " in message
    assert '`variants.vanilla.lr` is "fast"' in message
    assert "unknown key `train.log_evry` (did you mean `train.log_every`?)" in message


@pytest.mark.parametrize("raw, what", [(None, "is empty"), ([1, 2], "holds list [1, 2]"), ("wgan", 'holds str "wgan"')])
def test_a_file_that_is_not_a_mapping_is_refused(raw, what):
    with pytest.raises(GanpipeError) as err:
        parse_params(raw)
    assert str(err.value).startswith(f"params.yaml {what}, but it must hold a mapping of keys to values")


def write_params(folder: Path, text: str) -> Path:
    path = folder / "params.yaml"
    path.write_text(text)
    return path


def test_load_params_reads_yaml_exponent_floats_as_numbers(tmp_path):
    # PyYAML reads `5e-5` (no dot) as a string; it is still a valid learning rate.
    text = (REPO / "params.yaml").read_text().replace("lr: 0.00005", "lr: 5e-5")
    assert "lr: 5e-5" in text
    assert load_params(write_params(tmp_path, text)).variants["wgan"].lr == 5e-5


def test_load_params_refuses_a_key_given_twice_with_its_lines(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("    n_critic: 5\n", "    n_critic: 5\n    n_critic: 4\n")
    path = write_params(tmp_path, text)
    line = text.splitlines().index("    n_critic: 4") + 1
    with pytest.raises(GanpipeError) as err:
        load_params(path)
    message = str(err.value)
    assert f"is not valid YAML at line {line}, column 5: the key `n_critic` appears twice" in message
    assert f"(first on line {line - 1})" in message


def test_load_params_refuses_broken_yaml_in_one_paragraph_with_the_position(tmp_path):
    path = write_params(tmp_path, "model: wgan\nvariants: [unclosed\n")
    with pytest.raises(GanpipeError) as err:
        load_params(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not valid YAML at line 3, column 1: expected ',' or ']'")
    assert "\n" not in message


def test_load_params_says_where_to_run_when_the_file_is_missing(tmp_path):
    with pytest.raises(GanpipeError) as err:
        load_params(tmp_path / "params.yaml")
    assert "not found. Run from the ganpipe repository root" in str(err.value)


# --- every stage refuses bad params before doing any work ----------------------------------------


def test_every_stage_refuses_bad_params_within_seconds_and_creates_nothing(tmp_path):
    raw = copy.deepcopy(repo_params())
    raw["variants"]["wgan"]["n_critc"] = raw["variants"]["wgan"].pop("n_critic")
    raw["variants"]["vanilla"]["lr"] = "fast"
    raw["train"]["log_evry"] = raw["train"].pop("log_every")
    raw["variants"]["cgan"]["betas"] = [0.9]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    shutil.copytree(REPO / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]), PYTHONDONTWRITEBYTECODE="1")

    def run(stage: str) -> tuple[str, subprocess.CompletedProcess, float]:
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        return stage, result, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=2) as pool:  # one per core
        runs = list(pool.map(run, STAGES))

    for stage, result, seconds in runs:
        where = f"stages.{stage}: {result.stderr}"
        assert result.returncode == 2, where
        assert seconds < 20, where  # refused at start-up (imports included), not after any work
        assert "Traceback" not in result.stderr, where
        assert result.stdout == "", where
        message = result.stderr.strip()
        assert "\n" not in message, where
        assert message.startswith("error: params.yaml has 4 problems:"), where
        assert "unknown key `variants.wgan.n_critc` (did you mean `variants.wgan.n_critic`?)" in message, where
        assert '`variants.vanilla.lr` is "fast", but it must be a number > 0' in message, where
        assert "unknown key `train.log_evry` (did you mean `train.log_every`?)" in message, where
        assert "`variants.cgan.betas` is [0.9], but it must be a list of two numbers (beta1 and beta2), each >= 0 " \
            "and < 1, e.g. [0.9, 0.999]" in message, where
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no outputs, no mlflow.db


@pytest.mark.parametrize(
    "n, holdout, fix",
    [
        (15000, 10000, "or raise evaluator.holdout to 20000 (the evaluator then trains on the other 40000)"),
        (50000, 10000, "(MNIST has too few unseen images for 50000; `ganpipe evaluate --samples` measures a larger file"),
        (6000, 0, "or raise evaluator.holdout to 2000 (the evaluator then trains on the other 58000)"),
    ],
)
def test_an_evaluation_size_real_data_cannot_calibrate_is_refused_before_any_stage(n, holdout, fix):
    """Calibration needs real subsets of n from the unseen pool (test set + holdout), at most half of it."""
    def change(raw):
        raw["evaluate"]["n_samples"], raw["evaluator"]["holdout"] = n, holdout

    message = refused(change)
    most = (10000 + holdout) // 2
    assert f"evaluate.n_samples is {n}, but real data can calibrate the verdict for at most {most} samples" in message
    assert f"lower evaluate.n_samples to {most} or less" in message and fix in message
    assert not message.startswith("params.yaml has a problem: ``")


def test_the_largest_calibratable_evaluation_size_is_accepted():
    raw = copy.deepcopy(repo_params())
    raw["evaluate"]["n_samples"], raw["evaluator"]["holdout"] = 7500, 5000
    assert parse_params(raw).evaluate.n_samples == 7500
