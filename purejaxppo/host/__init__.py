"""The host machinery that drives the compiled program: `prepare` (build and check a run, a sweep or a
PBT population, and its resume point, before anything compiles), the chunk loop, signals and processes,
checkpoints and the run record, the run dir, the metrics store, loggers, memory limits, and loading a
trained policy. It imports the program and the envs, never a front end (the CLI, sweeps, PBT)."""
