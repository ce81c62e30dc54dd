"""Synthetic calibration profiles for tests (made-up coefficients: the tests check decisions, not speed)."""

from locmoe.inference.profile import DeviceProfile, GemmFit, LinkFit


def profile(
    grouped_tflops=100.0,
    dense_tflops=200.0,
    grouped_per_expert_s=2e-6,
    a2a_gbps=50.0,
    a2a_latency_s=20e-6,
    all_to_all=True,
) -> DeviceProfile:
    """By default the dense kernel runs twice as fast per executed FLOP: it wins at balanced loads and
    loses once the padding to the largest load costs more than that."""
    return DeviceProfile(
        device="synthetic",
        dtype="float32",
        grouped=GemmFit(10e-6, grouped_per_expert_s, 1e-12 / grouped_tflops),
        dense=GemmFit(10e-6, 0.0, 1e-12 / dense_tflops),
        copy=LinkFit(2e-6, 1e-9 / 1000.0),
        all_to_all=LinkFit(a2a_latency_s, 1e-9 / a2a_gbps) if all_to_all else None,
        world_size=2,
    ).validate()
