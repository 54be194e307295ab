"""Shared test set-up: the repository root and tests/ on sys.path, and the GCS emulator fixture."""

from __future__ import annotations

import os
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
for folder in (REPO_ROOT, TESTS_DIR):
    if folder not in sys.path:
        sys.path.insert(0, folder)

# gcsfs reads this when first imported; without it each bucket's first access waits 60 s on the emulator.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

GCS_BUCKET = "speech-enhance-test"


@pytest.fixture(scope="module")
def gcs():
    """A local GCS emulator (with the proxy TensorFlow's client goes through) for one test module,
    its variables set in os.environ while the module runs; gs://speech-enhance-test/ is its bucket."""
    pytest.importorskip("gcp_storage_emulator", reason="the GCS emulator comes with the test extra: "
                        "pip install -e '.[test]'")
    from gcs_emulator import GcsEmulator

    with GcsEmulator(GCS_BUCKET, tensorflow=True) as emulator, emulator.environ():
        yield emulator
