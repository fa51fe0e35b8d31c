"""Result provenance (revision, settings, machine beside every result) and settings-hashed cache keys."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from experiments.lib.cachekey import digest, proxy_digest, proxy_fingerprint
from experiments.lib.provenance import (git_revision, header_lines, provenance, sidecar_path, write_sidecars)
from experiments.lib.studies import EXPERIMENTS, missing_provenance, result_files, settings_of, study_names


def test_revision_is_a_commit_marked_dirty_when_the_tree_is():
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_revision())


def test_provenance_names_revision_settings_and_machine():
    meta = provenance("demo", {"seeds": [0, 1]}, revision="abc")
    assert meta["revision"] == "abc" and meta["settings"] == {"seeds": [0, 1]}
    assert meta["machine"]["cores"] == os.cpu_count() and meta["machine"]["torch"]
    lines = header_lines(meta)
    assert lines[0] == "- revision: `abc`" and "seeds=[0, 1]" in lines[2]


def test_sidecars_group_by_stem_and_keep_older_files_revisions(tmp_path):
    old = provenance("demo", {}, revision="old")
    for name in ("r.csv", "r.md", "s.md"):
        (tmp_path / name).write_text("x")
    write_sidecars([tmp_path / "r.csv", tmp_path / "r.md", tmp_path / "s.md"], old)
    assert sidecar_path(tmp_path / "r.csv") == tmp_path / "r.meta.json"
    assert json.loads((tmp_path / "s.meta.json").read_text())["files"] == {"s.md": "old"}
    time.sleep(1.1)  # the next run starts later than the sidecar was written
    new = provenance("demo", {"k": 1}, revision="new")
    write_sidecars([tmp_path / "r.md"], new)  # a rerun that only re-renders the markdown
    side = json.loads((tmp_path / "r.meta.json").read_text())
    assert side["revision"] == "new" and side["settings"] == {"k": 1}
    assert side["files"] == {"r.csv": "old", "r.md": "new"}


def test_a_study_written_sidecar_keeps_its_own_facts(tmp_path):
    meta = provenance("demo", {}, revision="rev")
    (tmp_path / "d.csv").write_text("x")
    (tmp_path / "d.meta.json").write_text(json.dumps({"proxy": "ShortTrain(...)", "revision": "stale"}))
    write_sidecars([tmp_path / "d.csv", tmp_path / "d.meta.json"], meta)
    side = json.loads((tmp_path / "d.meta.json").read_text())
    assert side["proxy"] == "ShortTrain(...)" and side["revision"] == "rev" and side["files"] == {"d.csv": "rev"}


@pytest.mark.parametrize("name", study_names())
def test_every_committed_result_names_its_revision(name):
    assert not missing_provenance(name)


def test_every_results_folder_belongs_to_a_study():
    """A result can only live beside the script and settings that produce it; experiments/results holds only the
    summaries a study's `summary` setting writes for tools (e.g. proxy_fidelity.json), each naming its revision."""
    folders = {p.parent for p in EXPERIMENTS.glob("**/results") if p.is_dir()}
    assert {f.name for f in folders - {EXPERIMENTS}} <= set(study_names())
    assert sum(len(result_files(name)) for name in study_names()) >= 30
    summaries = {Path(str(getattr(settings_of(n), "summary", ""))).name for n in study_names()} - {""}
    for path in (EXPERIMENTS / "results").glob("*"):
        if path.name.endswith(".meta.json"):
            continue
        assert path.name in summaries, f"{path} is no study's summary"
        side = json.loads(sidecar_path(path).read_text())
        assert str(side["files"][path.name]).strip(), f"{path} does not name its revision"


# ---- cache keys --------------------------------------------------------------------------------------------
def test_fingerprint_resolves_defaults():
    implicit, explicit = proxy_fingerprint({"seed": 0}), proxy_fingerprint({"seed": 0, "width_divisor": 16})
    assert implicit == explicit  # a default spelled out is the same setting
    assert implicit["width_divisor"] == 16 and implicit["default_corpus"] and "lr" in implicit
    assert proxy_fingerprint({"seed": 0, "width_divisor": 8}) != implicit
    assert "data_path" not in implicit  # unset (None) options are left out, so adding one changes no key
    assert proxy_fingerprint({"seed": 0, "swa_reference_context": None}) != implicit


def test_digest_ignores_speed_only_settings_and_sees_the_rest():
    base = proxy_digest({"seed": 0}, 1024)
    assert proxy_digest({"seed": 0, "threads": 4}, 1024) == base
    assert proxy_digest({"seed": 1}, 1024) != base
    assert proxy_digest({"seed": 0}, 2048) != base
    assert proxy_digest({"seed": 0, "fast": False}, 1024) != base
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


def test_the_fidelity_summary_has_exactly_the_keys_tools_read():
    """experiments/results/proxy_fidelity.json is a contract (issue 25): these keys, numbers where they are."""
    summary = json.loads((EXPERIMENTS / "results" / "proxy_fidelity.json").read_text())
    assert set(summary) == {"top_rung_tokens", "reference_tokens", "reference_seed", "search_seed", "n_genomes",
                            "spearman", "noise_ceiling", "ngram_bpb", "median_bpb"}
    assert set(summary["spearman"]) == {"rung0", "top", "published", "params", "latency"}
    assert set(summary["noise_ceiling"]) == {"top", "reference"}
    assert set(summary["ngram_bpb"]) == {"unigram", "bigram", "trigram"}
    assert set(summary["median_bpb"]) == {"top", "reference"}
    assert summary["reference_tokens"] >= 4 * summary["top_rung_tokens"] > 0
    assert summary["reference_seed"] != summary["search_seed"] and summary["n_genomes"] >= 24
    for group in ("spearman", "ngram_bpb", "median_bpb"):
        assert all(isinstance(v, float) for v in summary[group].values()), group
    assert summary["ngram_bpb"]["unigram"] > summary["ngram_bpb"]["bigram"] > summary["ngram_bpb"]["trigram"]
