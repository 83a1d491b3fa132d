"""``at2po view`` on a real two-step run of the tiny policy: the data it reads, the page it writes,
the CLI around it, and the page itself in headless Chromium.

The browser tests use the system's Chromium and chromedriver (Debian: ``chromium``,
``chromium-driver``). Where they are missing the tests skip, saying so; with
``AT2PO_REQUIRE_BROWSER=1`` (set by ``.ci/run``) they fail instead. The screenshot of the report
goes to ``test-artifacts/viewer.png`` at the repository root (git-ignored).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from train_helpers import fast_overrides

from at2po.cli.main import main
from at2po.train.config import load_config
from at2po.train.trainer import Trainer
from at2po.view.data import ViewError, find_runs, report_data
from at2po.view.page import embedded_json, render_page

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
NASTY = 'Where is "Alpha" </script><script>window.injected = 1</script> & <b>Beta</b>?'


@pytest.fixture(scope="module")
def run(tiny_policy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real AT²PO run: two steps, trees written at both."""
    out = tmp_path_factory.mktemp("view") / "run"
    Trainer(load_config("at2po", fast_overrides(tiny_policy_dir, out))).train()
    return out


@pytest.fixture(scope="module")
def compared(run: Path) -> Path:
    """Two copies of the run laid out as ``at2po compare`` does, the first with a question that
    holds ``</script>`` and HTML."""
    root = run.parent / "compare"
    for preset in ("at2po", "grpo"):
        shutil.copytree(run, root / preset / "seed0", ignore=shutil.ignore_patterns("checkpoints"))
    tree_file = root / "at2po" / "seed0" / "trees" / "step_000002.json"
    record = json.loads(tree_file.read_text(encoding="utf-8"))
    record["groups"][0]["example"]["question"] = NASTY
    _mark_as_t2po(record["groups"][0])
    tree_file.write_text(json.dumps(record), encoding="utf-8")
    _strip_to_old_format(root / "grpo" / "seed0" / "trees" / "step_000001.json")
    return root


def _mark_as_t2po(group: dict) -> None:
    """Give the group's first row leaf the fields a T²PO rollout records: the thinking
    intervention fired (its last two tokens forced), two discarded redraws, Φ and M_t."""
    node = group["tree"]["nodes"][group["row_leaves"][0]]
    n = len(node["act_ids"])
    node.update(
        intervention="stagnation",
        redraws=2,
        turn_score=0.4321,
        act_forced=[False] * (n - 2) + [True, True],
        act_uncertainty=[0.25] * (n - 2) + [None, None],
    )


def _strip_to_old_format(tree_file: Path) -> None:
    """The record as runs wrote it before ``at2po view``: no decoded turns, no picks."""
    record = json.loads(tree_file.read_text(encoding="utf-8"))
    for group in record["groups"]:
        del group["turns"]
        for node in group["tree"]["nodes"]:
            del node["picks"]
    tree_file.write_text(json.dumps({"step": 1, "groups": record["groups"]}), encoding="utf-8")


def _record(run: Path, step: int) -> dict:
    return json.loads((run / "trees" / f"step_{step:06d}.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ recorded data
def test_every_expansion_pick_is_recorded_on_the_kept_tree(run: Path):
    # 2 chains + 1 round × k=2 re-samples = 4 leaves = rollout.n_rows: nothing pruned
    for step in (1, 2):
        for group in _record(run, step)["groups"]:
            nodes = group["tree"]["nodes"]
            assert sum(len(n["picks"]) for n in nodes) == 2
            for node in nodes:
                siblings_max = len(nodes)
                for score in node["picks"]:
                    entropy = node["entropy"] if node["parent"] is not None else 0.0
                    assert entropy - 0.05 * siblings_max <= score <= entropy


def test_record_text_matches_the_token_ids(run: Path, tiny_policy_dir: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_policy_dir)
    for group in _record(run, 2)["groups"]:
        for node, turn in zip(group["tree"]["nodes"], group["turns"], strict=True):
            assert turn["act"] == tokenizer.decode(node["act_ids"])
            assert turn["obs"] == tokenizer.decode(node["obs_ids"])
            assert turn["tokens"] == [tokenizer.decode([t]) for t in node["act_ids"]]


def test_report_data_reads_metrics_and_trees_of_every_run(run: Path, compared: Path):
    data = report_data([compared])
    assert [r["name"] for r in data["runs"]] == ["at2po/seed0", "grpo/seed0"]
    assert data["step"] == 2
    grpo = data["runs"][1]
    assert [t["step"] for t in grpo["trees"]] == [1, 2]
    assert grpo["trees"][1] == _record(run, 2)
    assert [m["step"] for m in grpo["metrics"]] == [0, 1, 2]
    only = report_data([run], step=1)
    assert [t["step"] for t in only["runs"][0]["trees"]] == [1] and only["step"] == 1


def test_a_directory_without_runs_is_an_error_naming_it(tmp_path: Path):
    with pytest.raises(ViewError, match=f"{tmp_path} holds no run"):
        find_runs([tmp_path])


def test_a_step_without_trees_is_an_error_listing_the_steps(run: Path):
    with pytest.raises(ViewError, match="no run has trees for step 5; steps with trees: 1, 2"):
        report_data([run], step=5)


def test_a_damaged_metrics_line_is_an_error_naming_the_file(run: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(run, broken, ignore=shutil.ignore_patterns("checkpoints"))
    with (broken / "metrics.jsonl").open("a", encoding="utf-8") as lines:
        lines.write('{"step": 3, "eval/em"\n')
    with pytest.raises(ViewError, match=r"metrics.jsonl: line 4 is not JSON"):
        report_data([broken])


def test_embedded_json_cannot_end_its_script_element():
    data = {"q": NASTY, "n": [1, 2.5]}
    text = embedded_json(data)
    assert "<" not in text and json.loads(text) == data
    page = render_page(data, "t")
    assert page.count("</script>") == 2
    assert not re.search(r"""(src|href)=["']?(https?:)?//|@import|url\(""", page)  # nothing fetched


# ------------------------------------------------------------------------------------- CLI
def test_cli_writes_the_report_into_the_run(run: Path, capsys: pytest.CaptureFixture):
    assert main(["view", str(run)]) == 0
    report = run / "report.html"
    assert f"wrote {report}" in capsys.readouterr().out
    assert "report-data" in report.read_text(encoding="utf-8")


def test_cli_error_goes_through_systemexit_with_the_command_name(tmp_path: Path):
    with pytest.raises(SystemExit, match=f"at2po view: {tmp_path} holds no run"):
        main(["view", str(tmp_path)])


def test_serve_prints_a_local_url_that_serves_the_report(run: Path, tmp_path: Path):
    out = tmp_path / "served.html"
    command = [sys.executable, "-m", "at2po.cli.main", "view", str(run), "--out", str(out)]
    server = subprocess.Popen(
        [*command, "--serve", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout.readline().startswith(f"wrote {out}")
        url = re.fullmatch(r"serving (\S+) \(Ctrl-C to stop\)\n", server.stdout.readline())[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/served.html")
        assert httpx.get(url).text == out.read_text(encoding="utf-8")
    finally:
        server.terminate()
        server.wait(timeout=30)


# --------------------------------------------------------------------------------- browser
@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver, with the page's console kept."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        reason = (
            f"no browser for the viewer tests: {', '.join(missing)} missing "
            "(apt-get install chromium chromium-driver)"
        )
        if os.environ.get("AT2PO_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; AT2PO_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def page(browser, compared: Path):
    """The report of the two compared runs, loaded from file://."""
    report = compared / "report.html"
    assert main(["view", str(compared), "--out", str(report)]) == 0
    browser.get(report.as_uri())
    return browser


def _badge(texts: list[str], name: str) -> float | None:
    found = [re.search(rf"\b{name} ([+-]?\d+\.\d+)", t) for t in texts]
    values = [float(m[1]) for m in found if m]
    return values[0] if values else None


def test_tree_nodes_and_numbers_match_the_tree_file(page, compared: Path):
    group = _record(compared / "at2po" / "seed0", 2)["groups"][0]
    nodes = page.find_elements("css selector", "g.tree-node")
    assert [int(n.get_attribute("data-node-id")) for n in nodes] == list(range(len(nodes)))
    assert len(nodes) == len(group["tree"]["nodes"])
    assert page.find_element("id", "question").text == NASTY
    assert page.execute_script("return window.injected") is None
    assert page.find_element("id", "gold").text == " | ".join(group["example"]["golden_answers"])
    for element, node, turn in zip(nodes, group["tree"]["nodes"], group["turns"], strict=True):
        texts = [t.text for t in element.find_elements("css selector", "text")]
        assert _badge(texts, "A") == pytest.approx(turn["advantage"], abs=5e-4)
        if node["parent"] is None:
            continue
        # H recomputed from the sampled tokens' log-probs (mean negative log-prob)
        entropy = -sum(node["act_logprobs"]) / len(node["act_logprobs"])
        assert _badge(texts, "H") == pytest.approx(entropy, abs=5e-4)
        assert _badge(texts, "V") == pytest.approx(turn["value"], abs=5e-4)
        if node["reward"] is not None:
            assert _badge(texts, "R") == pytest.approx(node["reward"], abs=5e-3)
        if node["picks"]:
            assert f"★{len(node['picks'])}" in " ".join(texts)


def test_clicking_a_leaf_shows_its_tokens_with_their_log_probs(page, compared: Path):
    group = _record(compared / "at2po" / "seed0", 2)["groups"][0]
    leaf = group["row_leaves"][0]
    page.find_element("css selector", f'g.tree-node[data-node-id="{leaf}"]').click()
    detail = page.find_element("id", "node-detail")
    assert detail.get_attribute("data-node-id") == str(leaf)
    tokens = detail.find_elements("css selector", ".token")
    logprobs = group["tree"]["nodes"][leaf]["act_logprobs"]
    assert len(tokens) == len(logprobs) > 0
    shown = [float(t.find_element("css selector", ".lp").text) for t in tokens]
    assert shown == pytest.approx(logprobs, abs=5e-4)
    assert (
        detail.find_element("css selector", "pre.act").get_attribute("textContent")
        == (group["turns"][leaf]["act"])
    )


def test_t2po_interventions_redraws_and_forced_tokens_are_shown(page, compared: Path):
    group = _record(compared / "at2po" / "seed0", 2)["groups"][0]
    leaf = group["row_leaves"][0]
    box = page.find_element("css selector", f'g.tree-node[data-node-id="{leaf}"]')
    assert "TTI" in box.text and "↻2" in box.text
    box.click()
    detail = page.find_element("id", "node-detail")
    badges = {
        b.get_attribute("data-badge"): b.text
        for b in detail.find_elements("css selector", "[data-badge]")
    }
    assert badges["TTI"] == "TTI stagnation"
    assert badges["redraws"] == "redraws 2"
    assert badges["Φ"] == "Φ 0.432"
    tokens = detail.find_elements("css selector", ".token")
    forced = [i for i, t in enumerate(tokens) if "forced" in t.get_attribute("class").split()]
    assert forced == [len(tokens) - 2, len(tokens) - 1]
    assert "M 0.250" in tokens[0].get_attribute("title")
    assert "forced by TTI" in tokens[-1].get_attribute("title")


def test_curves_overlay_both_runs_against_steps_and_tokens(page, compared: Path):
    metrics = [
        json.loads(line)
        for line in (compared / "grpo" / "seed0" / "metrics.jsonl").read_text().splitlines()
    ]
    for axis in ("step", "tokens"):
        page.find_element("id", f"x-{axis}").click()
        lines = page.find_elements("css selector", '.chart[data-metric="eval/em"] polyline')
        assert sorted(line.get_attribute("data-run") for line in lines) == [
            "at2po/seed0",
            "grpo/seed0",
        ]
        points = sum("eval/em" in m for m in metrics)
        assert all(int(line.get_attribute("data-points")) == points for line in lines)
    assert page.find_elements("css selector", '.chart[data-metric^="perf/seconds_rollout"]')


def test_a_tree_file_of_the_old_format_shows_its_nodes_and_token_ids(page, compared: Path):
    from selenium.webdriver.support.ui import Select

    group = _record(compared / "grpo" / "seed0", 1)["groups"][0]
    Select(page.find_element("id", "tree-run")).select_by_visible_text("grpo/seed0")
    Select(page.find_element("id", "tree-step")).select_by_value("1")
    assert len(page.find_elements("css selector", "g.tree-node")) == len(group["tree"]["nodes"])
    page.find_element("css selector", 'g.tree-node[data-node-id="1"]').click()
    ids = " ".join(map(str, group["tree"]["nodes"][1]["act_ids"]))
    assert page.find_element("id", "node-detail").text.endswith("token ids: " + ids)
    Select(page.find_element("id", "tree-run")).select_by_visible_text("at2po/seed0")


def test_the_page_logs_no_console_errors_and_leaves_a_screenshot(page):
    page.find_element("id", "x-step").click()
    page.find_element("css selector", 'g.tree-node[data-node-id="1"]').click()
    errors = [e for e in page.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "viewer.png"
    assert page.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000 and math.isfinite(shot.stat().st_mtime)
