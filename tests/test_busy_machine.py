"""benchmarks/busy_machine.py: the table it prints, the background processes it must stop,
and the timeout that stops a run (issue 16's busy-machine measurement)."""

import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "busy_machine.py")


def run_script(tmp_path, *args):
    return subprocess.run(
        [sys.executable, SCRIPT, "--log-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def table_rows(output):
    return [line for line in output.splitlines() if line.startswith("| ") and line[2].isdigit()]


def burner_pids():
    """Pids of every ``while True: pass`` process on the machine; there may be some that
    are not the test's (this very suite measured beside the script's own burner)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return {line.split()[0] for line in ps.splitlines() if "while True: pass" in line}


def test_quiet_and_busy_rows_then_no_background_left(tmp_path):
    burners_before = burner_pids()
    output = run_script(
        tmp_path,
        "--background-procs",
        "0,2",
        "--set",
        "BUSY_MACHINE_PROBE=yes",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['BUSY_MACHINE_PROBE'])",
    )
    rows = table_rows(output)
    assert [row.split("|")[1].strip() for row in rows] == ["0", "2"]
    assert all(row.split("|")[4].strip() == "0" for row in rows)  # exit codes
    assert rows[0].split("|")[5].strip() == "1.00x"
    # The --set variable reached the command (it would have raised KeyError otherwise).
    assert (tmp_path / "busy2.log").read_text().strip() == "yes"
    assert burner_pids() <= burners_before  # the script's two burners are gone


def test_timeout_stops_the_run(tmp_path):
    output = run_script(tmp_path, "--background-procs", "0", "--timeout", "1", "--", "sleep", "30")
    (row,) = table_rows(output)
    assert "(stopped)" in row and row.split("|")[4].strip() == "None"
