"""method=auto: the policy's method by batch size and backend, in the text API and the job."""

from __future__ import annotations

import pytest

from experiments.common import policy
from experiments.configs import default
from experiments.speculative import plan, settings


def test_the_cpu_policy_follows_the_measured_table():
    assert policy.choose(1, "cpu") == policy.choose(4, "cpu") == "sd:5"
    assert policy.choose(5, "cpu") == policy.choose(8, "cpu") == "ar"
    assert policy.choose(1, "cpu", has_draft=False) == "ar"
    assert policy.choose(1, "gpu") == "rsd_s:2x4" and policy.choose(16, "tpu") == "sd:3"
    assert policy.choose(17, "gpu") == "ar"
    with pytest.raises(ValueError, match="batch must be >= 1"):
        policy.choose(0, "cpu")


@pytest.mark.parametrize("batch,text", [(1, "sd:5"), (8, None)])
def test_the_job_takes_the_policys_method(batch, text):
    s = settings.from_config(default.get_config(f"method=ar+auto,batch={batch}"))
    specs = plan.plan(s)
    assert specs[0].text == "ar"
    if text is None:
        assert len(specs) == 1  # AR alone: the policy's method at batch 8 is AR
    else:
        assert [x.text for x in specs] == ["ar", text] and specs[1].note.startswith("auto")
