import pytest

from metaembed.budget import DEFAULT_LADDER, Budget, parse_ladder
from metaembed.errors import BudgetError, MetaEmbedError


@pytest.mark.parametrize(
    "text, expected",
    [("4,8", Budget(4, 8)), (" 16 , 64 ", Budget(16, 64)), ("(2,4)", Budget(2, 4)), ("8x16", Budget(8, 16))],
)
def test_parse_accepts_the_written_forms(text, expected):
    assert Budget.parse(text) == expected


def test_parse_pairs_and_dicts():
    assert Budget.parse((1, 1)) == Budget(1, 1)
    assert Budget.parse([2.0, 4.0]) == Budget(2, 4)
    assert Budget.parse({"r_q": 4, "r_c": 8}) == Budget(4, 8)


@pytest.mark.parametrize("bad", ["", "4", "4,8,16", "a,b", "0,4", "4,-1", (1, 2, 3), None, 3.5])
def test_parse_rejects_malformed_budgets(bad):
    with pytest.raises(BudgetError):
        Budget.parse(bad)


def test_budget_errors_are_value_errors():
    with pytest.raises(ValueError):
        Budget(0, 1)
    assert issubclass(BudgetError, MetaEmbedError)


def test_check_within_names_what_is_available():
    Budget(16, 64).check_within(16, 64)
    with pytest.raises(BudgetError, match=r"only 64.*1\.\.64"):
        Budget(16, 128).check_within(16, 64, where="the index")
    with pytest.raises(BudgetError, match="query vectors"):
        Budget(32, 8).check_within(16, None)


def test_default_ladder_is_the_papers_and_nested():
    assert [b.as_tuple() for b in DEFAULT_LADDER] == [(1, 1), (2, 4), (4, 8), (8, 16), (16, 64)]
    for small, large in zip(DEFAULT_LADDER, DEFAULT_LADDER[1:]):
        assert small.r_q <= large.r_q and small.r_c <= large.r_c


def test_parse_ladder_sorts_and_dedups():
    assert parse_ladder("4,8 1,1 4,8") == (Budget(1, 1), Budget(4, 8))
    assert parse_ladder(None) == DEFAULT_LADDER
    with pytest.raises(BudgetError):
        parse_ladder("  ")
