"""Workload definitions; each module registers its workloads on import."""
