"""The Geo4D network (DynamiCrafter-based), its sampler and official-checkpoint loading. No Prefect."""
