"""attach(shape=, dtype=) refuses a ring of another geometry (e.g. left from an earlier run
at another resolution) instead of handing out frames of the wrong size."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import unique_name

import shmring


@pytest.mark.parametrize("role", [shmring.RingReader, shmring.RingWriter])
def test_attach_checks_the_geometry_it_was_told_to_expect(
    role: type[shmring.RingReader] | type[shmring.RingWriter],
) -> None:
    with shmring.RingWriter.create(unique_name("geo"), (480, 640, 3), np.uint8) as w:
        with pytest.raises(shmring.IncompatibleRing, match=r"shape \(480, 640, 3\), expected"):
            role.attach(w.name, shape=(1080, 1920, 3))
        with pytest.raises(shmring.IncompatibleRing, match="dtype uint8, expected float32"):
            role.attach(w.name, dtype=np.float32)
        with role.attach(w.name, shape=(480, 640, 3), dtype="uint8") as handle:
            assert handle.shape == (480, 640, 3) and handle.dtype == np.uint8
