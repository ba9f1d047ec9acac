"""The inference runtime: input checks, frame sizes, tiling, QC, caching, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from models import write_tiny_checkpoint

from enhancer.modeling.cascade import Profile
from enhancer.runtime import Enhancer, EnhancerInputError
from pacs_node.synth import synthetic_scan_counts


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def rapid() -> np.ndarray:
    return synthetic_scan_counts(seed=5, index=0, speed_cm_min=40)


def _fresh(weights: Path, profile: Profile, **kwargs: object) -> Enhancer:
    from enhancer.checkpoint import load_checkpoint

    loaded = load_checkpoint(weights)
    return Enhancer(loaded.model, loaded.card, device="cpu", profile=profile, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", [Profile.FAST, Profile.CASCADE])
@pytest.mark.parametrize("shape", [(2, 1024, 256), (1, 2048, 512), (3, 128, 64), (1, 100, 37)])
def test_any_frame_size_gives_uint16_counts_of_the_same_shape(
    tiny_weights: Path, profile: Profile, shape: tuple[int, int, int]
) -> None:
    enhancer = Enhancer.from_checkpoint(tiny_weights, device="cpu", profile=profile)
    rng = np.random.default_rng(0)
    frames = rng.poisson(20.0, size=shape).astype(np.uint16)
    result = enhancer.enhance_with_qc(frames)
    assert result.counts.dtype == np.uint16
    assert result.counts.shape == shape
    assert result.counts.any()
    assert len(result.qc.frames) == shape[0]
    assert result.model_name == "tiny-test" and result.profile is profile


def test_the_model_is_loaded_once_per_process(tiny_weights: Path) -> None:
    first = Enhancer.from_checkpoint(tiny_weights, device="cpu", profile="fast")
    assert Enhancer.from_checkpoint(str(tiny_weights), device="cpu", profile=Profile.FAST) is first
    assert Enhancer.from_checkpoint(tiny_weights, device="cpu", profile="cascade") is not first


@pytest.mark.parametrize("profile", [Profile.FAST, Profile.CASCADE])
def test_tiling_equals_a_whole_frame_pass(
    tiny_weights: Path, rapid: np.ndarray, profile: Profile
) -> None:
    whole = _fresh(tiny_weights, profile, max_tile_pixels=10**9)
    tiled = _fresh(tiny_weights, profile, max_tile_pixels=64 * 64, tile=64)
    assert tiled.margin > 0
    frames = rapid[:1, :512, :]
    with torch.inference_mode():
        counts = torch.from_numpy(frames.astype(np.float32)).unsqueeze(1)
        a = whole._run_batch(counts)
        b = tiled._run_batch(counts)
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-3)


def test_tiles_with_too_small_a_margin_would_show_seams(
    tiny_weights: Path, rapid: np.ndarray
) -> None:
    # The margin is what makes tiling exact: without it the same tiles differ.
    tiled = _fresh(tiny_weights, Profile.FAST, max_tile_pixels=64 * 64, tile=64)
    whole = _fresh(tiny_weights, Profile.FAST, max_tile_pixels=10**9)
    tiled.margin = 0
    with torch.inference_mode():
        counts = torch.from_numpy(rapid[:1, :256].astype(np.float32)).unsqueeze(1)
        assert not torch.allclose(tiled._run_batch(counts), whole._run_batch(counts), atol=1e-3)


def test_qc_reports_totals_against_the_dose_factor(tiny_weights: Path, rapid: np.ndarray) -> None:
    result = Enhancer.from_checkpoint(tiny_weights, device="cpu").enhance_with_qc(rapid)
    for index, frame in enumerate(result.qc.frames):
        assert frame.total.counts_in == pytest.approx(float(rapid[index].sum()))
        assert frame.total.expected == pytest.approx(2.0 * float(rapid[index].sum()))
        assert frame.total.counts_out == pytest.approx(float(result.counts[index].sum()))
        assert {r.name for r in frame.regions} >= {"body", "head", "pelvis", "legs"}
    assert result.qc.passed == all(f.passed for f in result.qc.frames)


def test_deterministic_runs_repeat_exactly(tiny_weights: Path, rapid: np.ndarray) -> None:
    enhancer = _fresh(tiny_weights, Profile.CASCADE, deterministic=True)
    try:
        assert np.array_equal(enhancer.enhance(rapid), enhancer.enhance(rapid))
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, 64, 64), np.uint16), "frame 0 has no counts"),
        (np.ones((64, 64), np.uint16), r"3-D \[frames, rows, columns\]; got shape \(64, 64\)"),
        (np.ones((1, 64, 64), np.int16), "unsigned integers .* got int16"),
        (np.full((1, 64, 64), np.nan, np.float32), "frame 0 contains NaN"),
        (np.full((1, 64, 64), -1.0), "frame 0 contains negative counts"),
        (np.ones((1, 8, 64), np.uint16), "8x64 are too small"),
        ([[[1]]], "must be a numpy array, not list"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    tiny_weights: Path, frames: object, message: str
) -> None:
    enhancer = Enhancer.from_checkpoint(tiny_weights, device="cpu")
    with pytest.raises(EnhancerInputError, match=message):
        enhancer.enhance(frames)  # type: ignore[arg-type]


def test_rounding_keeps_the_expected_total_of_a_low_count_background() -> None:
    from enhancer.runtime import round_counts

    values = np.full((1, 512, 512), 0.3)
    rounded = round_counts(values)
    assert rounded.dtype == np.uint16
    assert abs(float(rounded.sum()) / values.sum() - 1.0) < 0.01  # nearest would give 0


def test_enhance_stores_the_rounded_expected_counts(tiny_weights: Path) -> None:
    from enhancer.runtime import round_counts

    enhancer = Enhancer.from_checkpoint(tiny_weights, device="cpu")
    rapid = synthetic_scan_counts(4, 0, speed_cm_min=40)
    expected = enhancer.expected_counts(rapid)
    assert expected.dtype == np.float32 and expected.shape == rapid.shape
    assert not np.array_equal(expected, np.round(expected))  # not counts yet
    np.testing.assert_array_equal(enhancer.enhance(rapid), round_counts(expected))


def test_a_missing_default_model_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import enhancer.runtime as runtime

    monkeypatch.setattr(runtime, "DEFAULT_WEIGHTS", tmp_path / "default.safetensors")
    with pytest.raises(FileNotFoundError, match="no default model is shipped"):
        Enhancer.default(device="cpu")


def test_a_cuda_device_without_cuda_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    from enhancer.runtime import resolve_device

    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("profile", [Profile.FAST, Profile.CASCADE])
def test_cuda_autocast_agrees_with_the_cpu(
    tiny_weights: Path, rapid: np.ndarray, profile: Profile
) -> None:
    cpu = Enhancer.from_checkpoint(tiny_weights, device="cpu", profile=profile).enhance(rapid)
    gpu = Enhancer.from_checkpoint(tiny_weights, device="cuda", profile=profile)
    result = gpu.enhance_with_qc(rapid)
    assert result.device.startswith("cuda")
    assert result.counts.dtype == np.uint16 and result.counts.shape == rapid.shape
    # bf16 autocast: totals agree closely, pixels within bf16 rounding of the VST.
    assert abs(float(result.counts.sum()) / float(cpu.sum()) - 1.0) < 0.01
    difference = np.abs(result.counts.astype(np.int64) - cpu.astype(np.int64))
    assert np.percentile(difference, 99) <= max(3.0, 0.05 * float(cpu.max()))


def test_the_cpu_allocator_tuning_takes_on_glibc() -> None:
    import platform

    from enhancer.runtime import tune_cpu_allocator

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("allocator tuning applies to glibc only")
    assert tune_cpu_allocator() is True
    assert tune_cpu_allocator() is True  # idempotent
