import pytest
import torch

from cafe_bench.suites import DEFAULT_SUITE, load_suite


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["device"] = "cpu"


@pytest.fixture(scope="session")
def suite():
    return load_suite(DEFAULT_SUITE)
