"""Look at mixvae's runs in MLflow's own UI with a real headless browser (Debian's `chromium`).

Outside `make test` (it needs chromium and takes about two minutes on 2 cores); run it with
`make ui-check` or `.venv/bin/python scripts/ui_check.py [--out DIR]`. In a new temporary directory it
starts an `mlflow server` (sqlite, 127.0.0.1, a free port), runs a 3-trial `mixvae sweep` and one
`mixvae train` of the `quick` preset against it (2 epochs each), then loads the UI's pages with
`chromium --headless=new --dump-dom` (the DOM after the single-page app has rendered) and
`--screenshot`, and prints PASS/FAIL per check (INFO lines say what is seen but not required). The
screenshots and DOM dumps go to --out (default: a new temporary directory, printed at the end), never
into the repository. Exit status 1 when a check fails, 2 when the set-up (server, training) fails.

What MLflow 3.17's UI does, and so what is checked:
- The view (GenAI or model training) of an experiment page is the browser's choice: the sidebar
  toggle "GenAI | Model training", remembered in the browser (localStorage `mlflow.workflowType`,
  GenAI when never set), or `?workflowType=machine_learning` in the page's address. The experiment's
  tag `mlflow.experimentKind` is what UIs that choose the view per experiment read; mixvae sets it.
  Checked: the tag is on the experiment; the experiment page opened with the training workflow
  shows the runs table (page title "Runs - …", "Expand rows", no "Evaluation runs"), and so does the
  run page behind the `ui` link `mixvae train` prints; INFO: which view a fresh browser opens at the
  plain address.
- Child runs are collapsed under their parent in the runs table (an expander in the parent's row)
  and the browser is not clicked, so the nesting is checked on three pages: the experiment's table
  shows the parent with an expander; the parent's run page lists every child under "Child runs";
  every child's run page names the parent under "Parent run".
- The artifact page lists REPORT.html; opened at `…/artifacts/REPORT.html` the UI renders it in a
  sandboxed iframe, whose content the DOM dump does not include: the check reads the iframe's
  presence in the DOM and the screenshot's preview pane (not blank). Chromium draws that
  cross-origin iframe into a headless screenshot only with --disable-site-isolation-trials.
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
TRAINING_WORKFLOW = "workflowType=machine_learning"
SPACE = """\
model.kl_c_weight: {type: float, low: 0.1, high: 1.0, log: true}
model.usage_balance_weight: {type: categorical, choices: [1.0, 5.0]}
"""
TRIALS = 3
EPOCHS = "training.max_epochs=2"
BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- the server and the runs

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, timeout: float = 90.0) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` (sqlite backend, local artifacts) in its own process group; → (process, url)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner workers: nothing here uses them
    mlflow = BIN / "mlflow" if (BIN / "mlflow").exists() else "mlflow"
    command = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
               "--artifacts-destination", str(root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    stop_server(process)
    raise RuntimeError(f"mlflow server did not answer {url}/health; its log: {root / 'server.log'}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its PID: the web workers go too), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            continue


def mixvae(args: list[str], cwd: Path, uri: str, log: Path) -> str:
    """Run `mixvae ARGS` against the server; → its stdout. Raises RuntimeError when it fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=uri, JAX_PLATFORMS=env.get("JAX_PLATFORMS", "cpu"))
    exe = BIN / "mixvae" if (BIN / "mixvae").exists() else "mixvae"
    print(f"$ mixvae {' '.join(args)}", flush=True)
    done = subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"mixvae {args[0]} exited {done.returncode}; its output: {log}")
    return done.stdout


def last_value(output: str, key: str) -> str:
    values = re.findall(rf"^{re.escape(key)}=(\S+)$", output, flags=re.M)
    if not values:
        raise RuntimeError(f"no {key}= line in the output")
    return values[-1]


def make_runs(work: Path, out: Path, uri: str) -> dict:
    """The sweep (a parent and its trials) and one training run; → their ids, names and experiment."""
    from mlflow import MlflowClient

    (work / "space.yaml").write_text(SPACE)
    swept = mixvae(["sweep", "quick", "--space", "space.yaml", "--trials", str(TRIALS), "--set", EPOCHS],
                   work, uri, out / "sweep.log")
    trained = mixvae(["train", "-c", "quick", "--set", EPOCHS], work, uri, out / "train.log")
    client = MlflowClient(uri)
    parent = client.get_run(last_value(swept, "sweep_run_id"))
    run = client.get_run(last_value(trained, "run_id"))
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {
        "parent": (parent.info.run_id, parent.info.run_name),
        "children": sorted((c.info.run_id, c.info.run_name) for c in children),
        "run": (run.info.run_id, run.info.run_name),
        "run_link": next(iter(re.findall(r"^\s*ui\s+(http\S+)$", (out / "train.log").read_text(),
                                         flags=re.M)), None),  # in the summary on stderr
        "experiment": parent.info.experiment_id,
        "run_experiment": run.info.experiment_id,
        "kinds": {e: client.get_experiment(e).tags.get(KIND_TAG)
                  for e in {parent.info.experiment_id, run.info.experiment_id}},
    }


# ---------------------------------------------------------------- the browser

def find_chromium(given: str | None) -> str:
    for name in ([given] if given else ["chromium", "chromium-browser", "google-chrome"]):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError("no chromium found: `apt-get install chromium`, or pass --chromium PATH")


class Browser:
    """Headless chromium, one fresh profile per page (nothing remembered between pages)."""

    def __init__(self, executable: str, profiles: Path, out: Path, budget_ms: int):
        self.executable, self.profiles, self.out, self.budget_ms = executable, profiles, out, budget_ms
        self.count = 0

    def _chromium(self, action: list[str], url: str, budget_ms: int) -> str:
        self.count += 1
        command = [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu",
                   "--disable-site-isolation-trials", "--no-first-run", "--hide-scrollbars",
                   f"--user-data-dir={self.profiles / str(self.count)}", "--window-size=1400,1000",
                   f"--virtual-time-budget={budget_ms}", *action, url]
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        return done.stdout

    def page(self, name: str, url: str, ready) -> str:
        """The DOM of `url` after the app rendered, also saved as NAME.dom.html, and a screenshot NAME.png.
        When `ready(dom)` is false the page gets three times the virtual time once more."""
        dom = ""
        for budget in (self.budget_ms, 3 * self.budget_ms):
            dom = self._chromium(["--dump-dom"], url, budget)
            if ready(dom):
                break
        (self.out / f"{name}.dom.html").write_text(dom)
        self._chromium([f"--screenshot={self.out / f'{name}.png'}"], url, budget)
        return dom


def text_of(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", dom)))


def title_of(dom: str) -> str:
    titles = re.findall(r"<title>([^<]*)</title>", dom)
    return html.unescape(titles[0]) if titles else ""


def run_href(experiment: str, run_id: str) -> str:
    return f'href="#/experiments/{experiment}/runs/{run_id}"'


def key_value(dom: str, key: str) -> str:
    """The markup of the run page's "About this run" entry `key` (up to the next entry)."""
    start = dom.find(f'data-testid="key-value-{key}"')
    if start < 0:
        return ""
    end = dom.find('data-testid="key-value-', start + 1)
    return dom[start:end if end > 0 else len(dom)]


def preview_not_blank(png: Path) -> float:
    """Share of non-white pixels in the artifact preview pane (between the file tree and the side panel)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    height, width = pixels.shape[:2]
    pane = pixels[int(0.25 * height):int(0.9 * height), int(0.32 * width):int(0.70 * width)]
    return float((pane.min(axis=2) < 0.9).mean())


# ---------------------------------------------------------------- the checks

class Checks:
    def __init__(self):
        self.failed = 0

    def __call__(self, ok: bool, what: str, detail: str = "") -> bool:
        self.failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"  ({detail})" if detail else ""), flush=True)
        return ok

    @staticmethod
    def info(what: str) -> None:
        print(f"INFO  {what}", flush=True)


def training_view(dom: str) -> bool:
    text = text_of(dom)
    return title_of(dom).startswith("Runs - ") and "Expand rows" in text and "Evaluation runs" not in text


def check_view(check: Checks, browser: Browser, base: str, runs: dict) -> None:
    """(a) the tag, the training view at the training workflow's address, and what a fresh browser opens."""
    for experiment, kind in sorted(runs["kinds"].items()):
        check(kind == MODEL_TRAINING, f"experiment {experiment} is tagged {KIND_TAG}={MODEL_TRAINING}",
              f"found {kind!r}")
    experiment = runs["experiment"]
    dom = browser.page("experiment_plain", f"{base}/#/experiments/{experiment}",
                       lambda d: "Experiment" in title_of(d))
    check.info(f"a fresh browser at #/experiments/{experiment} opens "
               f"{'the model-training view' if training_view(dom) else 'the GenAI view'} "
               f"(page title {title_of(dom)!r}); MLflow 3.17 picks the view by the browser's "
               f"GenAI/Model training toggle, GenAI until a user switches it")
    dom = browser.page("experiment", f"{base}/#/experiments/{experiment}?{TRAINING_WORKFLOW}", training_view)
    check(training_view(dom), f"#/experiments/{experiment}?{TRAINING_WORKFLOW} shows the training view",
          f"page title {title_of(dom)!r}")
    check_table(check, dom, runs)


def check_table(check: Checks, dom: str, runs: dict) -> None:
    """(b1) the parent is a row of the runs table with an expander; its children are folded under it."""
    experiment, (parent_id, parent_name) = runs["experiment"], runs["parent"]
    cells = [cell.split('role="gridcell"')[0] for cell in dom.split('col-id="attributes.`Run Name`"')[1:]]
    row = next((cell for cell in cells if run_href(experiment, parent_id) in cell), "")
    check(bool(row) and f">{html.escape(parent_name)}<" in row,
          f"the runs table lists the sweep's parent {parent_name!r}")
    check("runnamecellrenderer" in row and "<button" in row,
          "the parent's row has the expander of a run with children")
    top_level = [name for run_id, name in runs["children"] if run_href(experiment, run_id) in dom]
    check.info(f"children shown as top-level rows: {top_level or 'none (folded under the parent)'}")


def check_family(check: Checks, browser: Browser, base: str, runs: dict) -> None:
    """(b2) the parent's page lists every child; (b3) every child's page names the parent."""
    experiment, (parent_id, parent_name) = runs["experiment"], runs["parent"]
    check(len(runs["children"]) == TRIALS, f"the sweep has {TRIALS} child runs",
          f"found {len(runs['children'])}")
    dom = browser.page("parent_run", f"{base}/#/experiments/{experiment}/runs/{parent_id}?{TRAINING_WORKFLOW}",
                       lambda d: "key-value-Child runs" in d)
    listed = key_value(dom, "Child runs")
    for run_id, name in runs["children"]:
        check(run_href(experiment, run_id) in listed and f">{html.escape(name)}<" in listed,
              f"the parent's page lists child {name!r} under Child runs")
    for index, (run_id, name) in enumerate(runs["children"]):
        dom = browser.page(f"child_run_{index}",
                           f"{base}/#/experiments/{experiment}/runs/{run_id}?{TRAINING_WORKFLOW}",
                           lambda d: "key-value-Parent run" in d)
        entry = key_value(dom, "Parent run")
        check(run_href(experiment, parent_id) in entry and f">{html.escape(parent_name)}<" in entry
              and name in text_of(dom), f"child {name!r}'s page names its parent {parent_name!r}")


def check_report(check: Checks, browser: Browser, base: str, runs: dict, out: Path) -> None:
    """(c) the run's artifacts list REPORT.html, and the UI renders it."""
    experiment, (run_id, run_name) = runs["run_experiment"], runs["run"]
    link = runs["run_link"]
    if check(link is not None, "`mixvae train` printed the run's UI link", str(link)):
        dom = browser.page("run_link", link, lambda d: run_name in text_of(d))
        text = text_of(dom)
        check(run_name in text and "Artifacts" in text and "Evaluation runs" not in text,
              "the printed link opens the run's page in the training view", f"page title {title_of(dom)!r}")
    page = f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts"
    dom = browser.page("artifacts", f"{page}?{TRAINING_WORKFLOW}", lambda d: "REPORT.html" in text_of(d))
    check("REPORT.html" in text_of(dom), f"run {run_name!r}'s artifact page lists REPORT.html")
    dom = browser.page("report", f"{page}/REPORT.html?{TRAINING_WORKFLOW}",
                       lambda d: "mlflow-html-iframe" in d)
    check(re.search(r'<iframe[^>]*mlflow-html-iframe', dom) is not None,
          "opening REPORT.html puts it into the UI's HTML preview")
    query = urllib.parse.urlencode({"path": "REPORT.html", "run_uuid": run_id})
    with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=30) as response:
        served = response.read().decode("utf-8", "replace")
    check("mixvae report" in served and run_id in served, "the server hands out the run's REPORT.html")
    share = preview_not_blank(out / "report.png")
    check(share > 0.02, "the screenshot shows REPORT.html rendered in the preview pane",
          f"{share:.1%} of the pane is not white; see {out / 'report.png'}")


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="screenshots and DOM dumps (default: a new temporary directory)")
    parser.add_argument("--chromium", help="the browser's executable (default: chromium on PATH)")
    parser.add_argument("--budget-ms", type=int, default=15000, help="chromium's virtual time per page")
    args = parser.parse_args(argv)
    out = (args.out or Path(tempfile.mkdtemp(prefix="mixvae-ui-check-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Checks()
    with tempfile.TemporaryDirectory(prefix="mixvae-ui-") as tmp:
        work = Path(tmp)
        try:
            browser = Browser(find_chromium(args.chromium), work / "profiles", out, args.budget_ms)
            server, base = start_server(work)
        except RuntimeError as exc:
            print(f"FAIL  set-up: {exc}")
            return 2
        try:
            runs = make_runs(work, out, base)
            print(f"server {base}: experiment {runs['experiment']}, sweep parent {runs['parent'][1]}, "
                  f"run {runs['run'][1]}", flush=True)
            check_view(check, browser, base, runs)
            check_family(check, browser, base, runs)
            check_report(check, browser, base, runs, out)
        except RuntimeError as exc:
            print(f"FAIL  set-up: {exc}")
            return 2
        finally:
            stop_server(server)
            shutil.copy(work / "server.log", out / "server.log")
    print(f"{'FAIL' if check.failed else 'PASS'}: {check.failed} check(s) failed; screenshots in {out}")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
