"""Test harness: CPU with 8 simulated devices, markers, and the real data bundle."""

import os

# Must happen before anything imports JAX.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(
    f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f
) + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    has_torch = importlib.util.find_spec("torch") is not None
    for item in items:
        for hw in ("tpu", "gpu"):
            if hw in item.keywords:
                item.add_marker(pytest.mark.skip(reason=f"needs a {hw.upper()}; tests run on CPU"))
        if "needs_torch" in item.keywords and not has_torch:
            item.add_marker(pytest.mark.skip(reason="needs torch: pip install -e '.[hf]'"))


def real_data_dir() -> Path | None:
    """The real data bundle: $SYMTUNE_DATA_DIR, else ../shared/data beside the repo."""
    env = os.environ.get("SYMTUNE_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if (path / "MANIFEST.json").is_file():
            return path
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = real_data_dir()
    if path is None:
        pytest.skip("real data bundle not found: set SYMTUNE_DATA_DIR (see `symtune data export`)")
    return path


@pytest.fixture(scope="module")
def registered(data_dir):
    """The symtune seqio tasks and mixtures, registered over the real data bundle."""
    from symtune.data.tasks import register_tasks

    old = os.environ.get("SYMTUNE_DATA_DIR")
    os.environ["SYMTUNE_DATA_DIR"] = str(data_dir)  # seqio Tasks read the configured directory
    yield register_tasks()
    if old is None:
        os.environ.pop("SYMTUNE_DATA_DIR")
    else:
        os.environ["SYMTUNE_DATA_DIR"] = old


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
