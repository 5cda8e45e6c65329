"""The compiled program: everything that runs under `jit`. The PPO update (`ppo`), its math (losses,
distributions, normalisation, recurrent cores, diagnostics, optimiser and schedules), the networks and
the policy, in-program evaluation, the chunk of updates a population runs per call, and PBT's
in-program step. Pure functions of arrays and frozen pytrees; nothing here reads or writes a file,
handles a signal or knows a front end (the architecture test holds it to that)."""
