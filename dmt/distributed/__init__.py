"""Distribution: the job's topology and process groups, flat and tower sharding on torchrec,
compressed comms, and the launcher of emulated hosts. Plain models live in ``dmt.model``."""
