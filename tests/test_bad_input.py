"""Bad input to `flashsearch run`: one `error:` line, exit code 2, nothing written. Everything the run will read
(config, data files, latency tables, seed genomes) is checked before the run directory is created, so no bad
input surfaces first as a failed trial inside a worker."""

from pathlib import Path

import pytest
import yaml

from factories import HYBRID_YAML
from flashsearch.cli import main

HYBRID = Path(HYBRID_YAML)


def hybrid_with(tmp_path: Path, **changes) -> Path:
    cfg = yaml.safe_load(HYBRID.read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    cfg["search"]["seeds"] = [str(HYBRID.parent / s) for s in cfg["search"].get("seeds", [])] \
        if "search__seeds" not in changes else cfg["search"]["seeds"]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = {
    "empty YAML": (lambda t: write(t, "empty.yaml", ""), "is empty"),
    "comments only": (lambda t: write(t, "comments.yaml", "# nothing here yet\n"), "is empty"),
    "top level a list": (lambda t: write(t, "list.yaml", "- space\n- search\n"), "must be a mapping"),
    "top level a string": (lambda t: write(t, "str.yaml", "hybrid_1b\n"), "must be a mapping"),
    "empty data file": (lambda t: hybrid_with(t, data__path=str(write(t, "empty.txt", ""))), "empty.txt"),
    "jsonl without the text field": (
        lambda t: hybrid_with(t, data__path=str(write(t, "d.jsonl", '{"body": "hello world"}\n' * 50))), "d.jsonl"),
    "missing latency table": (lambda t: hybrid_with(t, latency={"_target_": "lut", "table": str(t / "no.json")}),
                              "no.json"),
    "missing seed genome": (lambda t: hybrid_with(t, search__seeds=[str(t / "gone.yaml")]), "gone.yaml"),
    "seed genome not a mapping": (lambda t: hybrid_with(t, search__seeds=[str(write(t, "s.yaml", "- 1\n"))]),
                                  "s.yaml"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    make, needle = CASES[case]
    config = make(tmp_path)
    out_dir = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["run", str(config), f"out_dir={out_dir}", "search.trials=1", "search.fidelity=single",
                 "ray.address=local"])
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not out_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_search_whose_every_trial_fails_ends_with_its_report_not_an_export_error(tmp_path, capsys, monkeypatch,
                                                                                   plugins_on_path):
    config = hybrid_with(tmp_path, quality={"_target_": "fs_test_plugins.SleepyQuality", "sleep_s": 0.0})
    out_dir = tmp_path / "run"

    def always_fails(self, genome, budget):
        from flashsearch.errors import TrialFailed
        raise TrialFailed("diverged")

    import fs_test_plugins
    monkeypatch.setattr(fs_test_plugins.SleepyQuality, "evaluate", always_fails)
    code = main(["run", str(config), f"out_dir={out_dir}", "search.trials=2", "search.max_failures=1", "search.fidelity=single",
                 "search.workers=1", "ray.address=local"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "no trial completed, nothing exported" in err
    assert (out_dir / "trials.parquet").is_file() and not (out_dir / "export").exists()
