"""Run plumbing shared by the jobs: config checks, records and locks, progress bars, JSON,
meshes."""
