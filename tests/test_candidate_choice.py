"""The choice between scored candidates (workflows.choose), on its own: generate's best of several samples, and
refresh's carried-over adapter against generated and shifted ones."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loragen.workflows import CARRIED_OVER, Candidate, choose


def _carried(score):
    return Candidate(kind=CARRIED_OVER, adapter="0123456789ab", from_base="tiny@v1", score=score, metric="acc")


def _sample(seed, score, kind="generated"):
    return Candidate(seed=seed, kind=kind, score=score, metric="acc")


def test_the_best_score_wins():
    candidates = [_carried(0.3), _sample(5, 0.2), _sample(6, 0.7), _sample(5, 0.6, "shifted")]
    assert choose(candidates) is candidates[2]


def test_a_tie_keeps_the_carried_over_adapter_wherever_it_stands():
    assert choose([_carried(0.5), _sample(0, 0.5), _sample(0, 0.5, "shifted")]).kind == CARRIED_OVER
    assert choose([_sample(0, 0.5), _sample(1, 0.5), _carried(0.5)]).kind == CARRIED_OVER


def test_a_tie_between_samples_goes_to_the_earliest():
    first, second = _sample(3, 0.4), _sample(4, 0.4)
    assert choose([first, second]) is first
    assert choose([second, first]) is second


def test_the_very_candidate_is_returned_not_an_equal_one():
    twins = [_sample(1, 0.5), _sample(1, 0.5)]
    assert choose(twins) is twins[0]


def test_a_score_that_is_not_a_number_never_wins():
    assert choose([_carried(math.nan), _sample(0, 0.1)]).seed == 0
    assert choose([_carried(0.0), _sample(0, math.nan)]).kind == CARRIED_OVER


def test_nothing_or_an_unscored_candidate_is_refused():
    with pytest.raises(ValueError, match="no candidates"):
        choose([])
    with pytest.raises(ValueError, match="candidate 1 has no score"):
        choose([_carried(0.5), Candidate(seed=0)])


scores = st.floats(min_value=0, max_value=1) | st.just(math.nan)


@given(carried=scores, others=st.lists(st.tuples(st.sampled_from(["generated", "shifted"]), scores), max_size=6),
       place=st.integers(min_value=0, max_value=6))
def test_the_winner_never_scores_below_the_carried_over_adapter(carried, others, place):
    candidates = [_sample(seed, score, kind) for seed, (kind, score) in enumerate(others)]
    candidates.insert(min(place, len(candidates)), _carried(carried))
    chosen = choose(candidates)
    numbers = [c.score for c in candidates if not math.isnan(c.score)]
    if not math.isnan(carried):
        assert chosen.score >= carried
        assert chosen.kind == CARRIED_OVER or chosen.score > carried  # a tie keeps it
    if numbers:
        assert chosen.score == max(numbers)
