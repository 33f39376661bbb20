"""The seams of the package: what each side imports."""

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """Top-level modules loaded by ``statement`` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("statement", ["import dali_resizer.samples", "import dali_resizer",
                                       "from dali_resizer import PAD_LABEL, real_mask"])
def test_the_shared_definitions_need_neither_torch_nor_dali(statement):
    loaded = imported_after(statement)
    assert "torch" not in loaded and "nvidia" not in loaded, statement


def test_pipelines_import_dali_but_not_torch():
    loaded = imported_after("import pipelines")
    assert "nvidia" in loaded and "torch" not in loaded


def test_the_loader_and_the_modules_need_no_dali_to_import():
    loaded = imported_after("from dali_resizer import DALILoader, LearnableResizer, MullerResizer")
    assert "torch" in loaded and "nvidia" not in loaded


def test_pipelines_read_the_constants_the_torch_side_reads():
    import pipelines
    from dali_resizer import samples

    for name in ("MAX_PIXELS", "STATUS_OK", "STATUS_OVERSIZE", "STATUS_NOT_AN_IMAGE", "IMAGENET_MEAN", "IMAGENET_STD",
                 "SHARD_IMAGE_EXTENSIONS", "SHARD_LABEL_EXTENSION"):
        assert getattr(pipelines, name) is getattr(samples, name), name
