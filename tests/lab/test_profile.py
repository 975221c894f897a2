import pytest

import queuelab as ql


def test_profiles(monkeypatch):
    monkeypatch.delenv("QUEUELAB_PROFILE", raising=False)
    assert ql.profile() == "full" and ql.by_profile([10, 20], [2]) == [10, 20]
    monkeypatch.setenv("QUEUELAB_PROFILE", "quick")
    assert ql.profile() == "quick" and ql.by_profile(32, 8) == 8
    monkeypatch.setenv("QUEUELAB_PROFILE", "fast")
    with pytest.raises(ValueError, match="QUEUELAB_PROFILE='fast'"):
        ql.profile()
