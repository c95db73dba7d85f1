"""The memory check before loading (experiments.common.memory): a pair that would not fit
stops with one line naming both amounts, before anything loads."""

from __future__ import annotations

import pytest

from experiments.common import memory
from experiments.speculative import sources
from experiments.speculative.settings import Models
from models import loading, testing


def test_estimate_follows_the_layouts():
    config = testing.tiny_config("qwen2")
    count, largest = memory.param_count(config)
    assert memory.model_bytes(config, "float32", "float") == (4 * count, 4 * largest)
    assert memory.model_bytes(config, "bfloat16", "float")[0] == 2 * count
    assert memory.model_bytes(config, "float32", "int8")[0] == count


def test_a_pair_that_does_not_fit_is_refused_before_loading(tmp_path, monkeypatch):
    monkeypatch.setenv("RSD_JAX_CACHE", str(tmp_path / "cache"))
    target, draft = testing.write_tiny_pair(tmp_path)
    setup = Models(str(target), str(draft), 0, "float", "float", "float32", False, None)
    need = sources.check_memory(setup)
    assert need > memory.OVERHEAD_BYTES

    def never(*a, **kw):
        raise AssertionError("nothing may load")

    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    monkeypatch.setattr(loading, "load_model", never)
    with pytest.raises(memory.InsufficientMemoryError) as e:
        sources.real_models(setup)
    text = str(e.value)
    assert "needs about" in text and "GB is available" in text and "\n" not in text
    monkeypatch.setenv("RSD_JAX_SKIP_MEMORY_CHECK", "1")
    with pytest.raises(AssertionError, match="nothing may load"):
        sources.real_models(setup)  # the check is skipped; loading starts
