"""AI Factory Lab, hub side: site file, Slurm spawner, hub configuration and the `lab` command."""
