import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuelab.generation import MAX_NEW_TOKENS_LIMIT, Completion, GenerationParams, check_prompt


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": -5}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": MAX_NEW_TOKENS_LIMIT + 1}, "max_new_tokens must be between 1"),
        ({"max_new_tokens": 3.5}, "max_new_tokens must be an int"),
        ({"max_new_tokens": True}, "max_new_tokens must be an int"),
        ({"temperature": -0.1}, "temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"seed": "1"}, "seed must be an int"),
    ],
)
def test_bad_params_name_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GenerationParams(**kwargs)


def test_unknown_option_is_named_not_dropped():
    with pytest.raises(ValueError, match="unknown generation option.*max_tokens"):
        GenerationParams.from_kwargs({"max_tokens": 5})
    assert GenerationParams.from_kwargs({"max_new_tokens": 5}).max_new_tokens == 5


@pytest.mark.parametrize("bad, words", [(None, "must be a str"), (42, "must be a str"), ("", "empty"), ("  \n", "empty"),
                                        ("hi \ud800", "lone surrogate")])
def test_check_prompt(bad, words):
    with pytest.raises(ValueError, match=words):
        check_prompt(bad)


@given(st.integers(1, MAX_NEW_TOKENS_LIMIT), st.floats(0, 5), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)))
def test_valid_params_round_trip(n, temperature, seed):
    p = GenerationParams(max_new_tokens=n, temperature=temperature, seed=seed)
    assert (p.max_new_tokens, p.temperature, p.seed) == (n, temperature, seed)


def test_tokens_per_s():
    assert Completion("a b", 3, 10, 0.1, 2.0, "length").tokens_per_s == 5.0


@pytest.mark.parametrize("kwargs, words", [
    ({"temperature": 10**400}, "temperature must be a finite number"),
    ({"seed": 2**64}, "seed must fit in 64 bits"),
    ({"seed": -(2**63) - 1}, "seed must fit in 64 bits"),
    ({"stop": ["a"] * 5}, "at most 4"),
    ({"stop": [""]}, "must not be empty"),
    ({"stop": 3}, "stop must be a string or a list"),
    ({"stop": ["\udc00"]}, "lone surrogate"),
    ({"ignore_eos": 1}, "ignore_eos must be True or False"),
    ({"min_tokens": -1}, "min_tokens must be an int >= 0"),
    ({"min_tokens": 9, "max_new_tokens": 8}, "must not exceed max_new_tokens"),
])
def test_bad_options_are_value_errors_naming_them(kwargs, words):
    with pytest.raises(ValueError, match=words):
        GenerationParams(**kwargs)


def test_stop_is_kept_as_a_tuple_and_eos_rules():
    assert GenerationParams(stop="x").stop == ("x",) and GenerationParams(stop=None).stop == ()
    p = GenerationParams(min_tokens=2, max_new_tokens=5)
    assert [p.ends_at_eos(n) for n in (1, 2, 3)] == [False, False, True]
    assert not GenerationParams(ignore_eos=True).ends_at_eos(10)
