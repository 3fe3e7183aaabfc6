"""The core is still the circuit the formal proofs were run on (``tests/rtl_equiv.py``).

A change to ``rtl/`` that only rewrites how the circuit is expressed must pass this test; one
that changes the circuit on purpose fails it, and then the proofs of ``docs/proofs.md`` are
re-run and ``REFERENCE`` in ``tests/rtl_equiv.py`` moves to the commit they were run on.

One small configuration here (Yosys takes ~30 s of CPU for it); ``make equiv`` checks the
others.
"""

from __future__ import annotations

import subprocess

import pytest
import rtl_equiv


def _have_reference() -> bool:
    found = subprocess.run(
        ["git", "-C", str(rtl_equiv.ROOT), "cat-file", "-e", f"{rtl_equiv.REFERENCE}^{{commit}}"],
        capture_output=True,
    )
    return found.returncode == 0


pytestmark = pytest.mark.skipif(
    not _have_reference(), reason=f"the reference commit {rtl_equiv.REFERENCE} is not in this clone"
)

SMALL = (1, 2, 1)  # one context; monitor budget and failure limit both on


def test_core_is_equivalent_to_the_proven_reference() -> None:
    ref = rtl_equiv.reference_package(rtl_equiv.REFERENCE)
    same, summary = rtl_equiv.check(SMALL, ref, rtl_equiv.workdir())
    assert same, summary
