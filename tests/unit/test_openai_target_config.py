"""OpenAITarget configuration: base URL from the environment, key kept out of its identity."""

import pytest

from bbzo.blackbox.targets.openai_api import OpenAITarget
from bbzo.errors import InputError


def test_base_url_from_environment_is_part_of_the_id(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-123456")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://user:pw@127.0.0.1:9/v1")
    target = OpenAITarget("tiny")
    assert target.id.startswith("openai:tiny@http://127.0.0.1:9/v1")
    assert "pw" not in target.id and "sk-test" not in repr(target)
    target.close()


def test_missing_key_and_bad_options_are_clear(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        OpenAITarget("m")
    with pytest.raises(InputError, match="timeout_s"):
        OpenAITarget("m", api_key="k", timeout_s=0)
