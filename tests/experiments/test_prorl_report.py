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


def _ci(mean, lo, hi):
    return {"mean": mean, "lo": lo, "hi": hi, "se": 0.0, "clusters": 10}


def _epoch1_results(prorl_len, reinforce_len, grpo_len, prorl_var_blocks):
    def run(method, var_blocks, first=None):
        blocks = {"length": [2.0], "adv_var": var_blocks, "target_share": [0.0],
                  "first_adv_var": [first if first is not None else var_blocks[0]],
                  "centred_pos1": [0.1]}
        return {"method": method, "seed": 0, "test": {},
                "history": [{"train_length": 2.0, "train_adv_var": 1.0, "val_ioi@1": 0.0,
                             "blocks": blocks}]}

    iv = {"systems": {"prorl": {"sasrec/length@K": prorl_len},
                      "reinforce": {"sasrec/length@K": reinforce_len},
                      "grpo": {"sasrec/length@K": grpo_len}},
          "vs_prorl": {"reinforce": {"sasrec/length@K": _ci(
              prorl_len["mean"] - reinforce_len["mean"], prorl_len["lo"] - reinforce_len["hi"],
              prorl_len["hi"] - reinforce_len["lo"])}, "grpo": {"sasrec/length@K": _ci(0, 0, 0)}}}
    runs = [run("reinforce", [10.0, 8.0], first=10.0), run("prorl", prorl_var_blocks),
            run("grpo", [2.5, 2.0])]
    return {"runs": runs, "intervals": iv,
            "config": {"data": {"max_len": 10}, "rl": {"epochs": 1}}}


def test_epoch1_predictions_follow_the_stated_rules():
    res = _epoch1_results(_ci(1.7, 1.5, 1.9), _ci(5.0, 4.5, 5.6), _ci(9.6, 9.2, 9.9),
                          [0.5, 0.7])
    text = "\n".join(prorl_report.epoch1_predictions(res))
    assert "prorl sampled length ≈ 1.6 after epoch 1: holds" in text
    assert "reinforce sampled length ≈ 5.2 after epoch 1: holds" in text
    assert "grpo sampled length ≈ 10 after epoch 1: holds" in text
    assert "ProRL < REINFORCE < GRPO: holds" in text
    # variance / REINFORCE's first update (10): prorl blocks 0.05, 0.07 in [0.03, 0.12]
    assert "prorl advantage variance ≈ 0.06 × REINFORCE's first update in epoch 1: holds" in text
    assert "reinforce advantage variance ≈ 1 × REINFORCE's first update in epoch 1: holds" in text
    assert "grpo advantage variance ≈ 0.22" in text and "blocks 0.2–0.25" in text
    res = _epoch1_results(_ci(6.0, 5.5, 6.5), _ci(5.0, 4.5, 5.6), _ci(9.6, 9.2, 9.9),
                          [5.0, 0.7])
    text = "\n".join(prorl_report.epoch1_predictions(res))
    assert "prorl sampled length ≈ 1.6 after epoch 1: does not hold" in text
    assert "ProRL < REINFORCE < GRPO: does not hold" not in text  # overlapping: undecided
    assert "ProRL < REINFORCE < GRPO: undecided" in text
    assert "prorl advantage variance ≈ 0.06 × REINFORCE's first update in epoch 1: undecided" \
        in text
    res["config"]["rl"]["epochs"] = 3  # only for one-epoch runs
    assert prorl_report.epoch1_predictions(res) == []


def test_claims_use_user_clustered_intervals_when_present():
    res = _results(prorl_ioi=2.0)
    res["intervals"] = {"vs_prorl": {m: {"sasrec/ioi@1": _ci(0.1, lo, lo + 0.2),
                                         "sasrec/ior@1": _ci(5.0, 1.0, 9.0)}
                                     for m, lo in (("reinforce", 0.02), ("rtg", -0.05),
                                                   ("grpo", 0.01))}}
    text = "\n".join(prorl_report.claims(res))
    assert "on IoI@1: undecided (ProRL − rival, 95 % interval over users:" in text
    assert "on IoR@1: holds" in text
    table = prorl_report.interval_table({"intervals": {"systems": {
        "prorl": {"sasrec/ioi@1": _ci(2.0, 1.9, 2.1)}}, "vs_prorl": {}}})
    assert "| prorl | 2.000 [1.900, 2.100] |" in table


def test_one_epoch_runs_plot_their_blocks(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(prorl_report, "plot_blocks",
                        lambda blocks, path, every: drawn.append((sorted(blocks), every)))
    res = _epoch1_results(_ci(1.7, 1.5, 1.9), _ci(5.0, 4.5, 5.6), _ci(9.6, 9.2, 9.9),
                          [0.5, 0.7])
    res["config"]["rl"]["diag_every"] = 5
    for r in res["runs"]:  # two blocks of every series
        b = r["history"][0]["blocks"]
        b.update(length=[3.0, 2.5], centred_pos2=[-0.2])
    prorl_report.plot_curves(res, tmp_path / "a.png")
    assert drawn == [(["grpo", "prorl", "reinforce"], 5)]
    # the real figure is written, and multi-epoch runs keep the epoch curves
    monkeypatch.undo()
    prorl_report.plot_curves(res, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0
    assert prorl_report._one_epoch_blocks(_results(2.0)) is None
