"""The served-vs-reference agreement rule of the real-model test and `loramux demo real`:
scores within 5 points, or one answer where the eval set is too small for 5 points to be one
(18 prompts), and at least 80 % of the answers identical."""

from loramux.demo.real import Agreement


def test_one_flipped_answer_in_eighteen_agrees_two_do_not() -> None:
    assert Agreement(served=17, reference=18, identical=17, total=18).ok
    assert not Agreement(served=16, reference=18, identical=16, total=18).ok


def test_on_a_large_set_five_points_hold() -> None:
    assert Agreement(served=95, reference=100, identical=90, total=100).ok
    assert not Agreement(served=94, reference=100, identical=90, total=100).ok


def test_scores_alike_but_answers_different_do_not_agree() -> None:
    assert not Agreement(served=9, reference=9, identical=14, total=18).ok
