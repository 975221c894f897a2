import pytest

import queuelab as ql


@pytest.fixture(scope="session")
def tiny() -> ql.LanguageModel:
    return ql.load_model("tiny-random")


@pytest.fixture(scope="session")
def real() -> ql.LanguageModel:
    return ql.load_model()
