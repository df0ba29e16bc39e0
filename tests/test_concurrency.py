"""Two processes ingesting into one SQLite registry at once lose nothing."""

import os
import subprocess
import sys

from tests.helpers import run_cli
from tests.tiny import make_lora


def test_two_processes_ingest_concurrently(capsys, tiny_base, tmp_path, isolated_home):
    assert run_cli(capsys, "base", "add", "tiny", "--from", tiny_base).code == 0
    per_process = 4
    folders = [make_lora(tiny_base, tmp_path / f"lora{i}", seed=100 + i) for i in range(2 * per_process)]
    common = make_lora(tiny_base, tmp_path / "common", seed=99)  # both processes ingest this one
    script = (
        "import sys\n"
        "from loragen.cli import main\n"
        "for folder, task in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    try:\n"
        "        main(['ingest', folder, '--base', 'tiny', '--task', task])\n"
        "    except SystemExit as stop:\n"
        "        assert stop.code == 0, stop.code\n"
    )
    env = dict(os.environ, LORAGEN_HOME=str(isolated_home))
    procs = []
    for p in range(2):
        args = []
        for i in range(p * per_process, (p + 1) * per_process):
            args += [str(folders[i]), "shared-task" if i % 2 else f"task-{i}"]
        args += [str(common), "shared-task"]
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    adapters = run_cli(capsys, "list", "--json").json()
    assert len(adapters) == 2 * per_process + 1  # the common adapter once
    tasks = {t["name"]: t["adapters"] for t in run_cli(capsys, "list", "tasks", "--json").json()}
    assert tasks["shared-task"] == per_process + 1
