"""`ganpipe evaluate --samples FILE.npz`: a bad sample file is refused in one paragraph, never a traceback.

The bad-file checks run before the evaluator is loaded, so these tests run the real CLI in a folder with
no trained evaluator: reaching the evaluator would produce a different message and fail the test.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.instrument import samples_file
from pipeline.cli import app
from pipeline.data.mnist import read_split

from .conftest import REPO, mirror_path, repo_params

EXPECTED_FORM = "Expected an .npz holding `images` shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784)"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """64 real MNIST test digits (uint8) and their labels, read from the mirror."""
    images, labels = read_split(mirror_path(), "t10k")
    return images[:64].copy(), labels[:64].astype(np.int64)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder outside any repository, holding a valid params.yaml and no trained evaluator."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return tmp_path


def evaluate(path: Path) -> tuple[int, str]:
    """Run `ganpipe evaluate --samples PATH` in-process through typer; return (exit code, stderr)."""
    result = CliRunner().invoke(app, ["evaluate", "--samples", str(path), "--params", str(path.parent / "params.yaml")])
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.stdout == ""  # no JSON result for a refused file
    return result.exit_code, result.stderr


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def bad_files(digits) -> dict[str, tuple[object, str]]:
    """name -> (how to write the file, the problem the message must name)."""
    u8, labels = digits
    f = u8.astype(np.float32) / 255
    return {
        "text file": (lambda p: p.write_text("0.1, 0.2, 0.3\n"), "is not an .npz archive (it looks like a text file)"),
        "npy": (lambda p: p.write_bytes(_npy_bytes(u8)), "is a single .npy array, not an .npz archive"),
        "zero bytes": (lambda p: p.write_bytes(b""), "is an empty file (0 bytes)"),
        "truncated npz": (
            lambda p: p.write_bytes(_npz_bytes(p, images=u8)[:3000]),
            "is a damaged or incomplete .npz archive that cannot be opened (BadZipFile",
        ),
        "corrupted npz": (
            lambda p: p.write_bytes(_flip_middle_byte(_npz_bytes(p, images=u8))),
            "`images` cannot be read: the archive is damaged (BadZipFile: Bad CRC-32",
        ),
        "no images": (lambda p: write_npz(p, x=u8, labels=labels), "has no `images` array (it holds `x`, `labels`)"),
        "empty archive": (lambda p: write_npz(p), "is an empty .npz archive with no arrays in it"),
        "no samples": (lambda p: write_npz(p, images=u8[:0]), "`images` is empty (shape (0, 28, 28))"),
        "scalar": (lambda p: write_npz(p, images=np.float32(0.5)), "`images` is a single value"),
        "one image": (lambda p: write_npz(p, images=u8[0]), "`images` has shape (28, 28), which is not one of the accepted shapes (a single image? add a batch axis: images[None])"),
        "channels last": (lambda p: write_npz(p, images=u8[..., None]), "`images` has shape (64, 28, 28, 1), which is not one of the accepted shapes (channels-last? drop the channel axis: images[..., 0])"),
        "rgb": (lambda p: write_npz(p, images=np.repeat(u8[:, None], 3, axis=1)), "`images` has shape (64, 3, 28, 28), which is not one of the accepted shapes (3 channels; MNIST samples have one)"),
        "wrong size": (lambda p: write_npz(p, images=u8[:, :27, :27]), "`images` has shape (64, 27, 27)"),
        "int32": (lambda p: write_npz(p, images=u8.astype(np.int32)), "`images` has dtype int32, which is not accepted; convert it to uint8"),
        "bool": (lambda p: write_npz(p, images=u8 > 127), "`images` has dtype bool, which is not accepted"),
        "complex": (lambda p: write_npz(p, images=f.astype(np.complex64)), "`images` has dtype complex64, which is not accepted"),
        "object": (
            lambda p: write_npz(p, images=np.array(list(f), dtype=object)),
            "`images` holds Python objects (dtype object), which are refused because loading them would run pickled code",
        ),
        "nan": (lambda p: write_npz(p, images=_with(f, 3, np.nan)), "`images` holds 1 NaN and 0 infinite values, in 1 of the samples"),
        "inf": (lambda p: write_npz(p, images=_with(f, 5, np.inf)), "`images` holds 0 NaN and 1 infinite values"),
        "float 0-255": (lambda p: write_npz(p, images=u8.astype(np.float32)), "float `images` range from 0 to 255, outside [0, 1] (values up to 255 look like uint8 pixels stored as floats: divide by 255)"),
        "float -1..1": (lambda p: write_npz(p, images=f * 2 - 1), "float `images` range from -1 to 1, outside [0, 1] (values in [-1, 1] look like tanh outputs: rescale with (images + 1) / 2)"),
        "float slightly over": (lambda p: write_npz(p, images=_with(f, 0, 1.01)), "float `images` range from 0 to 1.01, outside [0, 1]"),
        "labels too short": (lambda p: write_npz(p, images=u8, labels=labels[:10]), "`labels` has shape (10,), but it must be (64,): one digit per image in `images`"),
        "labels 2d": (lambda p: write_npz(p, images=u8, labels=labels[:, None]), "`labels` has shape (64, 1), but it must be (64,)"),
        "labels above 9": (lambda p: write_npz(p, images=u8, labels=_with(labels, 7, 10)), "`labels` range from 0 to 10: 1 of them are outside the digits 0-9"),
        "labels negative": (lambda p: write_npz(p, images=u8, labels=_with(labels, 7, -1)), "`labels` range from -1 to 9: 1 of them are outside the digits 0-9"),
        "labels fractional": (lambda p: write_npz(p, images=u8, labels=labels + 0.5), "`labels` has dtype float64 and must hold whole numbers, the digits 0-9"),
        "labels strings": (lambda p: write_npz(p, images=u8, labels=labels.astype(str)), "`labels` has dtype <U21 and must hold whole numbers"),
    }


def _with(array: np.ndarray, index: int, value) -> np.ndarray:
    out = array.copy()
    out.flat[index * 7] = value
    return out


def _flip_middle_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz_bytes(scratch: Path, **arrays) -> bytes:
    np.savez(scratch, **arrays)
    return scratch.read_bytes()


CASES = [
    "text file", "npy", "zero bytes", "truncated npz", "corrupted npz", "no images", "empty archive", "no samples", "scalar",
    "one image", "channels last", "rgb", "wrong size", "int32", "bool", "complex", "object", "nan", "inf",
    "float 0-255", "float -1..1", "float slightly over", "labels too short", "labels 2d", "labels above 9",
    "labels negative", "labels fractional", "labels strings",
]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_sample_file_is_refused_by_the_cli_in_one_paragraph(case, digits, workdir):
    write, problem = bad_files(digits)[case]
    path = workdir / "samples.npz"
    write(path)

    code, stderr = evaluate(path)

    assert code == 2
    message = stderr.strip()
    assert "\n" not in message, message  # one paragraph
    assert message.startswith(f"error: {path}: "), message
    assert problem in message, message
    assert EXPECTED_FORM in message  # and the fix: the form that is accepted
    assert "evaluator" not in message  # refused before the evaluator was looked for


def test_cases_cover_every_bad_file_kind(digits):
    assert sorted(CASES) == sorted(bad_files(digits))


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_samples_path_that_is_not_a_file_is_refused(kind, workdir):
    path = workdir / ("nothing.npz" if kind == "missing" else "a-folder.npz")
    if kind == "directory":
        path.mkdir()
    code, stderr = evaluate(path)
    assert code == 2
    assert f"error: {path} {'does not exist' if kind == 'missing' else 'is a directory'}. Pass the path of an .npz" in stderr


def test_the_installed_ganpipe_command_refuses_a_bad_file_without_a_traceback(workdir):
    path = workdir / "samples.npz"
    path.write_text("not numbers\n")
    ganpipe = shutil.which("ganpipe") or str(Path(sys.executable).parent / "ganpipe")
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}

    result = subprocess.run(
        [ganpipe, "evaluate", "--samples", str(path)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: {path}: is not an .npz archive (it looks like a text file). Expected an .npz holding `images` "
        "shaped (N, 28, 28), (N, 1, 28, 28) or (N, 784), uint8 in [0, 255] or float in [0, 1], and optionally "
        "`labels` (N,) of digits 0-9; e.g. np.savez('samples.npz', images=images, labels=labels)."
    )


# --- every accepted form loads to the same array -------------------------------------------------


def accepted_forms(u8: np.ndarray) -> dict[str, np.ndarray]:
    n = len(u8)
    forms = {}
    for dtype_name, array in (
        ("uint8", u8),
        ("float32", (u8 / 255).astype(np.float32)),
        ("float64", u8 / 255),
    ):
        forms[f"{dtype_name} (N, 28, 28)"] = array
        forms[f"{dtype_name} (N, 1, 28, 28)"] = array.reshape(n, 1, 28, 28)
        forms[f"{dtype_name} (N, 784)"] = array.reshape(n, 784)
    return forms


def test_every_accepted_shape_and_dtype_loads_to_the_same_array(digits, tmp_path):
    u8, labels = digits
    loaded = {}
    for form, array in accepted_forms(u8).items():
        path = write_npz(tmp_path / f"{form.replace(' ', '_')}.npz", images=array, labels=labels)
        images, got_labels = samples_file.load(path)
        loaded[form] = images
        assert images.shape == (len(u8), 28, 28) and images.dtype == np.float32, form
        np.testing.assert_array_equal(got_labels, labels)
    reference = loaded["uint8 (N, 28, 28)"]
    assert reference.min() == 0.0 and reference.max() == 1.0
    np.testing.assert_array_equal(np.rint(reference * 255).astype(np.uint8), u8)  # uint8 survives exactly
    for form, images in loaded.items():
        np.testing.assert_array_equal(images, reference, err_msg=form)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float32])
def test_labels_of_any_integer_or_whole_float_dtype_load_as_int64(dtype, digits, tmp_path):
    u8, labels = digits
    path = write_npz(tmp_path / "samples.npz", images=u8, labels=labels.astype(dtype))
    images, got = samples_file.load(path)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, labels)


def test_a_file_without_labels_loads_with_labels_none(digits, tmp_path):
    u8, _ = digits
    images, labels = samples_file.load(write_npz(tmp_path / "samples.npz", images=u8))
    assert labels is None and images.shape == (len(u8), 28, 28)


# --- sizes: judged from the archive's headers, before anything is decompressed --------------------


def _declaring(path: Path, shape: tuple[int, ...], payload: bytes) -> Path:
    """An .npz whose `images` header declares `shape` (uint8) followed by only `payload`: reading the
    array would fail or need the declared size, so a refusal naming the count came from the header."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "|u1", "fortran_order": False, "shape": shape})
            member.write(payload)
    return path


def test_a_file_declaring_two_million_images_is_refused_from_its_header_with_the_cap(workdir):
    path = _declaring(workdir / "bomb.npz", (2_000_000, 28, 28), bytes(4096))
    code, stderr = evaluate(path)
    assert code == 2
    assert "holds 2,000,000 images, more than the cap of 100,000 samples" in stderr
    assert "needs at least 1.5 GiB" not in stderr and "GiB of memory" in stderr
    assert "--max-samples 2000000" in stderr  # the override is named


def test_the_sample_cap_is_overridable_and_counts_the_real_images(digits, workdir):
    u8, _ = digits
    path = write_npz(workdir / "s.npz", images=u8)
    result = CliRunner().invoke(
        app, ["evaluate", "--samples", str(path), "--params", str(workdir / "params.yaml"), "--max-samples", "50"]
    )
    assert result.exit_code == 2 and "holds 64 images, more than the cap of 50 samples" in result.stderr
    assert samples_file.load(path, max_samples=64)[0].shape == (64, 28, 28)


def test_a_wrong_shape_is_refused_from_the_header_before_reading(workdir):
    path = _declaring(workdir / "big.npz", (10, 10_000, 10_000), bytes(10))
    code, stderr = evaluate(path)
    assert code == 2 and "`images` has shape (10, 10000, 10000), which is not one of the accepted shapes" in stderr


@pytest.fixture
def evaluator_root(instrument, workdir):
    """workdir with the session's small trained evaluator saved where the pipeline keeps it."""
    from pipeline.common import layout
    from pipeline.instrument import evaluator, reference

    model, ref = instrument
    evaluator.save(model, workdir / layout.CLASSIFIER)
    reference.save(ref, workdir / layout.REFERENCE)
    return workdir


@pytest.mark.parametrize("n", [1, 9, 100])
def test_too_few_samples_are_refused_stating_the_minimum_and_advice_that_works(n, mnist, evaluator_root, monkeypatch):
    from pipeline.instrument.sample_count import chance_real_set_looks_collapsed, minimum_samples

    monkeypatch.setenv("DVC_ROOT", str(evaluator_root))  # the repository root the CLI reads the evaluator from
    path = write_npz(evaluator_root / "few.npz", images=mnist.x_test[:n])
    code, stderr = evaluate(path)
    message = " ".join(stderr.split())
    assert code == 2 and "\n" not in stderr.strip()
    fewest = int(message.split("needs at least ")[1].split(".")[0])
    assert f"holds {n} samples" in message and f"--n {max(fewest, 1000)}" in message
    assert "min_share_ratio" not in message  # the count comes from the file: lowering a param is no fix
    shares = evaluator_root_shares(evaluator_root)
    # The stated minimum is where real digits stop looking collapsed by chance (at most 1 in 1,000
    # real sets), and a tenth fewer would not be enough.
    assert chance_real_set_looks_collapsed(fewest, shares, 0.25) <= 1e-3
    assert chance_real_set_looks_collapsed(int(fewest * 0.9), shares, 0.25) > 1e-3
    assert 100 < fewest < 1000 and fewest == minimum_samples(shares, 0.25, 5)


def evaluator_root_shares(root: Path) -> np.ndarray:
    from pipeline.common import layout
    from pipeline.instrument import reference

    return reference.load(root / layout.REFERENCE).class_hist


def test_sample_refuses_a_count_above_the_cap_and_an_unwritable_out_before_any_work(workdir):
    big = CliRunner().invoke(app, ["sample", "--n", "1000000", "--out", str(workdir / "s.npz")])
    assert big.exit_code == 2 and "--n 1,000,000 is above the cap of 100,000 samples" in big.stderr
    assert "--max-samples 1000000" in big.stderr and big.exception is None or isinstance(big.exception, SystemExit)
    blocker = workdir / "a-file"
    blocker.write_text("")
    bad_out = CliRunner().invoke(app, ["sample", "--n", "10", "--out", str(blocker / "s.png")])
    assert bad_out.exit_code == 2 and f"cannot write {blocker / 's.png'}: {blocker} is a file" in bad_out.stderr
    assert "generator" not in bad_out.stderr  # refused before the generator was looked for


def test_compare_refuses_an_unwritable_out_dir_before_reading_the_store(workdir):
    blocker = workdir / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["compare", "--out-dir", str(blocker / "reports")])
    assert result.exit_code == 2 and f"{blocker} is a file, not a folder" in result.stderr
    assert "Traceback" not in result.output


def test_a_write_into_an_unwritable_folder_names_the_folder_not_a_traceback(tmp_path):
    from pipeline.common import atomic
    from pipeline.common.errors import GanpipeError

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores permission bits: a path through a file fails for anyone
            target = tmp_path / "a-file" / "out.json"
            (tmp_path / "a-file").write_text("")
        else:
            target = locked / "out.json"
        with pytest.raises(GanpipeError, match="cannot write .*out.json"):
            atomic.write_json(target, {"x": 1})
        with pytest.raises(GanpipeError, match="cannot write"):
            atomic.check_writable(target)
    finally:
        locked.chmod(0o700)


def test_a_file_larger_than_real_data_can_calibrate_is_measured_whole_and_judged_on_a_calibrated_subset(
    mnist, evaluator_root, monkeypatch
):
    """The test instrument's unseen pool is 12,000 images, so real baselines exist up to 6,000 samples. A file
    of 8,000 is measured in full, judged on a random 6,000, and says so; real digits pass, and the same
    count drawn from five digits only is still caught as inter-class collapse."""
    import json

    monkeypatch.setenv("DVC_ROOT", str(evaluator_root))
    params = ["--params", str(evaluator_root / "params.yaml")]
    real = write_npz(evaluator_root / "real.npz", images=mnist.x_test[:8000])
    result = CliRunner().invoke(app, ["evaluate", "--samples", str(real), *params])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["n_samples"] == 8000 and out["verdict_samples"] == 6000 and out["fld_real_at_n"] is None
    assert not out["collapse"]["detected"], out["collapse"]
    assert "judged on a random 6000 of 8000" in result.stderr
    low = np.isin(mnist.y_train, [0, 1, 2, 3, 4])
    half = write_npz(evaluator_root / "half.npz", images=mnist.x_train[low][:8000])
    result = CliRunner().invoke(app, ["evaluate", "--samples", str(half), *params])
    out = json.loads(result.stdout)
    assert out["collapse"]["kind"] in ("inter-class", "both") and out["class_coverage"] == 5


def test_the_same_file_gives_the_same_numbers_whatever_thread_count_the_environment_set(mnist, evaluator_root, monkeypatch):
    """torch's default thread count follows the machine (its cores, OMP_NUM_THREADS), and the count changes
    the embedding in its last bits. `ganpipe evaluate` runs on params' evaluator.threads, so a process that
    started with 1 thread and one that started with 3 print identical results."""
    import torch

    monkeypatch.setenv("DVC_ROOT", str(evaluator_root))
    path = write_npz(evaluator_root / "real.npz", images=mnist.x_test[:2000])
    before, outputs, used = torch.get_num_threads(), [], []
    try:
        for environment_default in (1, 3):
            torch.set_num_threads(environment_default)
            result = CliRunner().invoke(app, ["evaluate", "--samples", str(path), "--params", str(evaluator_root / "params.yaml")])
            assert result.exit_code == 0, result.stderr
            outputs.append(result.stdout)
            used.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    assert outputs[0] == outputs[1]
    assert used == [repo_params()["evaluator"]["threads"]] * 2
