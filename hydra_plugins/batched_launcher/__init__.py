"""A Hydra launcher that lets a task train the jobs of a batch together: hydra/launcher=batched.

Each job runs as through Hydra's run_job with the basic launcher (its directory, .hydra/, log, env_set,
callbacks; job_run.py, with fewer copies of its config). A task that can train together with other jobs defers
its work (deferral.py) instead of doing it; once every job of the batch has run, the launcher hands the
deferred work to the task's own `run_together` (on Linux in its launch process, forked when the sweep starts:
launch_process.py), which returns each job's value or exception, and puts them into the jobs' returns. A task
that never defers runs exactly as under the basic launcher.
"""
