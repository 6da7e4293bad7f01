"""The ProRL report's claim checks and epoch table on hand-made results."""

from experiments import prorl_report


def _run(method, seed, ioi, ior, ctr, lengths, adv_vars):
    hist = [{"train_length": ln, "train_adv_var": av, "val_ioi@1": 0.0}
            for ln, av in zip(lengths, adv_vars, strict=True)]
    return {"method": method, "seed": seed, "history": hist,
            "test": {"sasrec/ioi@1": ioi, "sasrec/ior@1": ior, "sasrec/ctr@1": ctr}}


def _results(prorl_ioi):
    runs = [
        _run("prorl", 0, prorl_ioi, 300.0, 0.62, [2.0, 3.0], [0.1, 0.1]),
        _run("prorl", 1, prorl_ioi + 0.2, 320.0, 0.64, [2.0, 5.0], [0.1, 0.3]),
        _run("reinforce", 0, 1.0, 200.0, 0.5, [5.0, 4.0], [2.0, 2.0]),
        _run("rtg", 0, 1.5, 250.0, 0.5, [3.0, 3.0], [0.3, 0.3]),
        _run("grpo", 0, 1.2, 220.0, 0.5, [8.0, 10.0], [1.0, 1.0]),
    ]
    return {"runs": runs, "config": {"data": {"max_len": 10}},
            "baselines": {"pretrained": {"sasrec/ctr@1": 0.6}}}


def test_claims_hold_and_fail_with_the_numbers():
    ok = prorl_report.claims(_results(prorl_ioi=2.0))
    text = "\n".join(ok)
    assert "on IoI@1: holds" in text and "on IoR@1: holds" in text
    assert "CTR@1 within 0.05 of the pretrained policy's: holds (+0.030)" in text
    assert "grpo drives the sampled path length to the maximum (10): holds" in text
    assert "moderate length (between 2 and 8): holds (last epoch 4.00)" in text
    # per epoch (mean over seeds): prorl 0.1, 0.2 < rtg 0.3 < grpo 1.0 < reinforce 2.0
    assert "ProRL < RTG < GRPO < REINFORCE in every epoch: holds (in epochs [1, 2] of 2" in text
    res = _results(prorl_ioi=2.0)
    res["runs"][1]["history"][1]["train_adv_var"] = 0.9  # epoch 2 prorl mean 0.5 > rtg 0.3
    part = "\n".join(prorl_report.claims(res))
    assert "in every epoch: partly holds (in epochs [1] of 2; last epoch prorl 0.5," in part
    bad = "\n".join(prorl_report.claims(_results(prorl_ioi=1.3)))  # mean 1.4 < rtg 1.5
    assert "on IoI@1: does not hold" in bad and "rtg -0.1" in bad


def test_epoch_table_normalises_variance_by_reinforce_epoch_one():
    table = prorl_report.epoch_table(_results(2.0))
    row = next(line for line in table.splitlines() if line.startswith("| prorl |"))
    assert "2.00 / 4.00" in row  # mean sampled length per epoch over the two seeds
    assert row.endswith(f"| {0.1 / 2.0:.3g} / {0.2 / 2.0:.3g} |")
