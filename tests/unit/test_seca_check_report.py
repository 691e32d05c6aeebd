"""The run summary's report of the final rewrites: error rates under the run's own checks and
every success with its probabilities and the checks that passed it."""

from __future__ import annotations

from bbzo.attacks.seca.run import final_prompt_report


def record(qid, *, changed, success, eq, coh):
    def verdicts(name, aspect, passed):
        return [] if passed is None else [{"name": name, "aspect": aspect, "passed": passed}]

    return {"id": qid, "changed": changed, "success": success, "original_question": f"{qid}?",
            "adversarial_question": f"{qid} again?" if changed else f"{qid}?",
            "target_letter": "B", "p_target_before": 0.1, "p_target_after": 0.6,
            "equivalence_passed": eq, "coherence_passed": coh, "answer_verdicts": [],
            "equivalence_verdicts": verdicts("alignment", "equivalence", eq),
            "coherence_verdicts": verdicts("repetition", "coherence", coh)}


def test_final_prompt_report():
    report = final_prompt_report([
        record("a", changed=True, success=True, eq=True, coh=True),
        record("b", changed=True, success=False, eq=False, coh=True),
        record("c", changed=True, success=False, eq=True, coh=None),
        record("d", changed=False, success=False, eq=None, coh=None)])
    assert report["final_rewrites"] == 3
    assert report["final_equivalence_error_rate"] == 1 / 3
    assert report["final_coherence_error_rate"] == 0.0  # unchecked is not an error
    assert report["successes"] == [{"id": "a", "original": "a?", "rewrite": "a again?",
                                    "target_letter": "B", "p_target_before": 0.1,
                                    "p_target_after": 0.6,
                                    "checks": ["alignment", "repetition"]}]
    empty = final_prompt_report([])
    assert empty["final_equivalence_error_rate"] is None and empty["successes"] == []
