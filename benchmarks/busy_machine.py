"""Wall time of any command, quiet and beside N CPU-bound processes, side by side in one run.

Issue 16 asks that the README's main command and the test suite keep near their quiet speed
while other processes use the CPU. This script runs the command once per background count
(``0`` = quiet), starting and stopping the background processes itself (each a Python
``while True: pass``), and prints the wall time, the load average just before the command
ended and the slowdown against the quiet run::

    python benchmarks/busy_machine.py --background-procs 0,1,8 -- \\
        python tuned_examples/cartpole_staq.py --no-tune --stop-timesteps=10000

Each background process runs in a session of its own by default (``--background-sessions
own``). Under Linux's autogroup scheduler the CPU is shared between sessions first, so this is
the case of unrelated jobs; ``shared`` puts them all in one session, where together they get
one session's share. The command always runs in a session of its own.

``--set VAR=VALUE`` (repeatable) runs the command with that environment variable, for
example ``--set OMP_NUM_THREADS=2`` for torch's default thread count on 2 cores. The
command's own output goes to ``--log-dir`` (one file per run), not to the terminal.
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List

BURN_CPU = "while True: pass"


def start_background(count: int, own_sessions: bool) -> List[subprocess.Popen]:
    """``count`` CPU-bound processes. Linux's autogroup scheduler shares the CPU between
    sessions first: burners in one shared session take one session's share however many
    there are, while burners in sessions of their own each take a full share, as
    unrelated jobs (other terminals, CI jobs) do."""
    return [
        subprocess.Popen([sys.executable, "-c", BURN_CPU], start_new_session=own_sessions)
        for _ in range(count)
    ]


def stop_background(processes: List[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


def timed_run(
    command: List[str], env: Dict[str, str], log_path: str, timeout: float
) -> Dict[str, float]:
    """Runs ``command`` to its end or to ``timeout`` seconds (then kills it, exit ``None``);
    wall seconds, exit code, and the 1-minute load near its end."""
    start = time.perf_counter()
    load_near_end = os.getloadavg()[0]
    with open(log_path, "w") as log:
        # Its own session, so that a stopped run takes its Ray processes with it.
        process = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        while process.poll() is None:
            if time.perf_counter() - start > timeout:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return {"seconds": timeout, "returncode": None, "load": load_near_end}
            # The 1-minute load average lags; the last sample before the end is the one
            # that reflects the run's own conditions.
            load_near_end = os.getloadavg()[0]
            try:
                process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
    return {
        "seconds": time.perf_counter() - start,
        "returncode": process.returncode,
        "load": load_near_end,
    }


def autogroup_state() -> str:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return "on" if f.read().strip() == "1" else "off"
    except OSError:
        return "unknown"


def parse_settings(pairs: List[str]) -> Dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes VAR=VALUE, got {pair!r}.")
        settings[name] = value
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--background-procs",
        default="0,1",
        help="comma-separated counts of CPU-bound background processes; 0 = quiet (default 0,1)",
    )
    parser.add_argument(
        "--background-sessions",
        choices=("own", "shared"),
        default="own",
        help="each background process in a session of its own (default: under Linux's "
        "autogroup scheduler each then gets a full share) or all in one shared session",
    )
    parser.add_argument("--set", action="append", default=[], help="VAR=VALUE for the command")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before a run is stopped"
    )
    parser.add_argument("--log-dir", default="busy_machine_logs")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to time after --")
    counts = [int(n) for n in args.background_procs.split(",")]
    if any(n < 0 for n in counts):
        parser.error(f"--background-procs must be counts >= 0, got {args.background_procs!r}")
    env = {**os.environ, **parse_settings(args.set)}
    os.makedirs(args.log_dir, exist_ok=True)

    print(f"command: {' '.join(command)}")
    print(
        f"settings: {parse_settings(args.set) or 'none'}; {os.cpu_count()} CPUs; background "
        f"processes in {args.background_sessions} sessions; autogroup {autogroup_state()}"
    )
    print("| background processes | wall (s) | load (1 min) near the end | exit | vs quiet |")
    print("|---|---|---|---|---|")
    quiet_seconds = None
    for count in counts:
        background = start_background(count, args.background_sessions == "own")
        try:
            log_path = os.path.join(args.log_dir, f"busy{count}.log")
            run = timed_run(command, env, log_path, args.timeout)
        finally:
            stop_background(background)
        if count == 0:
            quiet_seconds = run["seconds"]
        stopped = run["returncode"] is None
        ratio = f"{run['seconds'] / quiet_seconds:.2f}x" if quiet_seconds else "-"
        ratio = f"> {ratio}" if stopped and quiet_seconds else ratio
        wall = f"> {run['seconds']:.0f} (stopped)" if stopped else f"{run['seconds']:.1f}"
        print(
            f"| {count} | {wall} | {run['load']:.2f} | {run['returncode']} | {ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
