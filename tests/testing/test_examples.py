"""docs/testing.md's worked examples, run as a user runs them: copied out of the doc (so doc
and test cannot diverge) into a directory with no project configuration (pytest-asyncio's
strict mode), run by pytest in a subprocess with the installed plugin, against migemu and
under ``--migemu-against=qemu`` (real QEMU 7.2: the migemu-only examples must be skipped,
with the reason, and the first must pass on QEMU too)."""

from __future__ import annotations

import shutil

import pytest
from testing_support import PYTHON, doc_examples, run_pytest

# test functions per example: progress (2), cancel (1), dst_exit (1)
EXPECTED = {"progress": 2, "cancel": 1, "dst_exit": 1}


def write_examples(tmp_path):
    examples = doc_examples()
    assert sorted(examples) == sorted(EXPECTED)
    for name, code in examples.items():
        (tmp_path / f"test_example_{name}.py").write_text(code)
    return examples


def test_examples_pass_on_migemu(tmp_path):
    write_examples(tmp_path)
    counts, out = run_pytest(PYTHON, tmp_path)
    assert counts == {"passed": sum(EXPECTED.values())}, out


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
def test_examples_against_qemu(tmp_path):
    write_examples(tmp_path)
    counts, out = run_pytest(PYTHON, tmp_path, "--migemu-against=qemu")
    assert counts == {"passed": 1, "skipped": 3}, out
    assert out.count("migemu-only feature, not run against real QEMU") == 3, out
